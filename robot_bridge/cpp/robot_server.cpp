// The robot-side server of docs/bridge-protocol.md, in C++. It mirrors robot_bridge/server.py rule
// for rule (sessions, checks in order, error codes, modes, watchdog, limits, rate limit, fault latch,
// the JSON-lines log); what it saves is the Python on the robot side of every round trip. Known
// differences, none of which an agent that follows the protocol meets: a header with several faults
// may be refused for another of them first; map keys that repeat count once, the first; the log
// writes refused actions as float32; and there is no console report every 10 s.

#include "robot_server.hpp"

#include <arpa/inet.h>
#include <msgpack.h>
#include <pthread.h>
#include <signal.h>
#include <zmq.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <thread>

namespace omniloop {
namespace {

constexpr int kVersion = 1;
constexpr size_t kMaxHeaderBytes = 64 * 1024;
constexpr size_t kMaxArrays = 8;
constexpr size_t kMaxArrayBytes = 16 * 1024 * 1024;
constexpr int64_t kMaxMessageBytes = 64LL * 1024 * 1024;
constexpr size_t kMaxDims = 4;
constexpr int kSendHwm = 64;
constexpr int kDrainMax = 64;
constexpr double kLogFlushS = 0.5;
constexpr double kFineWaitS = 100e-6;
constexpr size_t kRttWindow = 4096;

const std::set<std::string> kTypes = {"hello", "welcome", "obs",    "command", "heartbeat", "arm",   "disarm",
                                      "estop", "reset",   "status", "bye",     "ack",       "error", "fault"};

size_t itemsize(const std::string& dtype) {
    if (dtype == "uint8") return 1;
    if (dtype == "int16") return 2;
    if (dtype == "int32" || dtype == "float32") return 4;
    if (dtype == "int64" || dtype == "float64") return 8;
    return 0;  // not a wire dtype
}

double monotonic() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
int64_t wall_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}
int64_t perf_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// A message that breaks the protocol; `code` is the error reply's code.
struct ProtocolError {
    std::string code, detail;
    std::optional<int64_t> seq;
};

// Inside a catch (...): what was thrown, in words.
std::string failure() {
    try {
        throw;
    } catch (const std::exception& e) {
        return e.what();
    } catch (...) {
        return "an exception that is not a std::exception";
    }
}

// ---- msgpack: reading ---------------------------------------------------------------------------

const msgpack_object* lookup(const msgpack_object& map, const char* key) {
    size_t n = std::strlen(key);
    for (uint32_t i = 0; i < map.via.map.size; ++i) {
        const msgpack_object& k = map.via.map.ptr[i].key;
        if (k.type == MSGPACK_OBJECT_STR && k.via.str.size == n && std::memcmp(k.via.str.ptr, key, n) == 0)
            return &map.via.map.ptr[i].val;
    }
    return nullptr;
}
bool is_int(const msgpack_object* o) {  // one that fits an int64 (the protocol's ints all do)
    return o && ((o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) ||
                 o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER);
}
int64_t as_int(const msgpack_object& o) {
    return o.type == MSGPACK_OBJECT_POSITIVE_INTEGER ? static_cast<int64_t>(o.via.u64) : o.via.i64;
}
bool is_str(const msgpack_object* o) { return o && o->type == MSGPACK_OBJECT_STR; }
std::string as_str(const msgpack_object& o) { return std::string(o.via.str.ptr, o.via.str.size); }
bool valid_utf8(const char* p, size_t n) {
    const auto* s = reinterpret_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
        if (!len || i + len > n) return false;
        uint32_t cp = len == 1 ? c : c & (0x7F >> len);
        for (size_t k = 1; k < len; ++k) {
            if ((s[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        // overlong forms, UTF-16 surrogates and code points past U+10FFFF are not UTF-8
        static const uint32_t least[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < least[len] || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return false;
        i += len;
    }
    return true;
}

// What msgspec refuses in a header and msgpack-c lets through: an extension type, a string that is
// not UTF-8 (it would reach the JSON log), a map key that is not a string. Empty when there is none.
std::string header_fault(const msgpack_object& o) {
    switch (o.type) {
        case MSGPACK_OBJECT_EXT:
            return "msgpack extension type in the header: the protocol has none";
        case MSGPACK_OBJECT_STR:
            return valid_utf8(o.via.str.ptr, o.via.str.size) ? "" : "a string in the header is not UTF-8";
        case MSGPACK_OBJECT_ARRAY:
            for (uint32_t i = 0; i < o.via.array.size; ++i) {
                std::string fault = header_fault(o.via.array.ptr[i]);
                if (!fault.empty()) return fault;
            }
            return "";
        case MSGPACK_OBJECT_MAP:
            for (uint32_t i = 0; i < o.via.map.size; ++i) {
                if (o.via.map.ptr[i].key.type != MSGPACK_OBJECT_STR) return "a map key in the header is not a string";
                std::string fault = header_fault(o.via.map.ptr[i].key);
                if (fault.empty()) fault = header_fault(o.via.map.ptr[i].val);
                if (!fault.empty()) return fault;
            }
            return "";
        default:
            return "";
    }
}

const char* type_name(const msgpack_object* o) {
    if (!o) return "NoneType (missing)";
    switch (o->type) {
        case MSGPACK_OBJECT_NIL:
            return "NoneType";
        case MSGPACK_OBJECT_BOOLEAN:
            return "bool";
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
            return "int";
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
            return "float";
        case MSGPACK_OBJECT_STR:
            return "str";
        case MSGPACK_OBJECT_BIN:
            return "bytes";
        case MSGPACK_OBJECT_ARRAY:
            return "list";
        case MSGPACK_OBJECT_MAP:
            return "dict";
        default:
            return "extension";
    }
}

// One array of a received message: a view of its frame.
struct InArray {
    std::string name, dtype;
    std::vector<int64_t> shape;
    const zmq_msg_t* frame;
};

// A decoded message. Its strings and arrays point into the received frames (msgpack-c does not copy
// them), so a Message must not outlive the next receive; it keeps the unpacked header alive.
struct Message {
    std::string type, session;
    int64_t seq = 0, t_ns = 0;
    const msgpack_object* body = nullptr;
    std::vector<InArray> arrays;
    msgpack_unpacked unpacked;
    Message() { msgpack_unpacked_init(&unpacked); }
    ~Message() { msgpack_unpacked_destroy(&unpacked); }
    Message(const Message&) = delete;
    Message& operator=(const Message&) = delete;
    const msgpack_object* field(const char* key) const { return lookup(*body, key); }
    const InArray* array(const std::string& name) const {
        for (auto& a : arrays)
            if (a.name == name) return &a;
        return nullptr;
    }
};

// frames: the message's frames after the routing id. Checks every field and size before a byte of
// an array is interpreted; throws ProtocolError naming the first fault.
void decode(const std::deque<zmq_msg_t>& frames, size_t first, Message& msg) {
    if (frames.size() <= first) throw ProtocolError{"malformed", "empty message", {}};
    const zmq_msg_t& head = frames[first];
    size_t hsize = zmq_msg_size(const_cast<zmq_msg_t*>(&head));
    if (hsize > kMaxHeaderBytes)
        throw ProtocolError{
            "too_large",
            "header of " + std::to_string(hsize) + " bytes, the limit is " + std::to_string(kMaxHeaderBytes),
            {}};
    size_t off = 0;
    const char* data = static_cast<const char*>(zmq_msg_data(const_cast<zmq_msg_t*>(&head)));
    if (msgpack_unpack_next(&msg.unpacked, data, hsize, &off) != MSGPACK_UNPACK_SUCCESS || off != hsize)
        throw ProtocolError{"malformed", "header is not msgpack", {}};
    const msgpack_object& h = msg.unpacked.data;
    if (h.type != MSGPACK_OBJECT_MAP)
        throw ProtocolError{"malformed", std::string("header must be a map, got ") + type_name(&h), {}};
    const msgpack_object* seq = lookup(h, "seq");
    std::optional<int64_t> ref = is_int(seq) ? std::optional<int64_t>(as_int(*seq)) : std::nullopt;
    std::string fault = header_fault(h);
    if (!fault.empty()) throw ProtocolError{"malformed", fault, ref};
    const msgpack_object* v = lookup(h, "v");
    if (!is_int(v) || as_int(*v) != kVersion)
        throw ProtocolError{"version",
                            "protocol version " + (is_int(v) ? std::to_string(as_int(*v)) : std::string(type_name(v))) +
                                ", this side speaks 1",
                            ref};
    const msgpack_object* type = lookup(h, "type");
    if (!is_str(type))
        throw ProtocolError{"malformed", std::string("header field 'type' must be str, got ") + type_name(type), ref};
    msg.type = as_str(*type);
    if (!kTypes.count(msg.type))
        throw ProtocolError{"unknown_type", "message type '" + msg.type.substr(0, 40) + "'", ref};
    auto need = [&](const char* key, bool ok, const char* kind, const msgpack_object* o) {
        if (!ok)
            throw ProtocolError{
                "malformed", std::string("header field '") + key + "' must be " + kind + ", got " + type_name(o), ref};
    };
    need("seq", is_int(seq) && as_int(*seq) >= 0, "an int >= 0", seq);
    msg.seq = as_int(*seq);
    const msgpack_object* t_ns = lookup(h, "t_ns");
    need("t_ns", is_int(t_ns), "int", t_ns);
    msg.t_ns = as_int(*t_ns);
    const msgpack_object* session = lookup(h, "session");
    need("session", is_str(session), "str", session);
    msg.session = as_str(*session);
    const msgpack_object* body = lookup(h, "body");
    need("body", body && body->type == MSGPACK_OBJECT_MAP, "dict", body);
    msg.body = body;
    const msgpack_object* arrays = lookup(h, "arrays");
    need("arrays", arrays && arrays->type == MSGPACK_OBJECT_ARRAY, "list", arrays);
    if (arrays->via.array.size > kMaxArrays)
        throw ProtocolError{"too_large", std::to_string(arrays->via.array.size) + " arrays, the limit is 8", ref};
    for (uint32_t i = 0; i < arrays->via.array.size; ++i) {
        const msgpack_object& d = arrays->via.array.ptr[i];
        const msgpack_object *name = nullptr, *dtype = nullptr, *shape = nullptr;
        if (d.type == MSGPACK_OBJECT_MAP) {
            name = lookup(d, "name");
            dtype = lookup(d, "dtype");
            shape = lookup(d, "shape");
        }
        if (!is_str(name) || !is_str(dtype) || !shape || shape->type != MSGPACK_OBJECT_ARRAY)
            throw ProtocolError{"malformed", "an array descriptor needs name (str), dtype (str) and shape (list)", ref};
        InArray a{as_str(*name), as_str(*dtype), {}, nullptr};
        if (!itemsize(a.dtype))
            throw ProtocolError{
                "bad_shape", "array '" + a.name + "': dtype '" + a.dtype.substr(0, 20) + "' is not a wire dtype", ref};
        if (shape->via.array.size > kMaxDims)
            throw ProtocolError{"bad_shape", "array '" + a.name + "': more than 4 dimensions", ref};
        for (uint32_t j = 0; j < shape->via.array.size; ++j) {
            const msgpack_object& n = shape->via.array.ptr[j];
            if (!is_int(&n) || as_int(n) < 0)
                throw ProtocolError{"bad_shape", "array '" + a.name + "': a size is not an int >= 0", ref};
            a.shape.push_back(as_int(n));
        }
        msg.arrays.push_back(std::move(a));
    }
    if (frames.size() - first - 1 != msg.arrays.size())
        throw ProtocolError{"malformed",
                            "header names " + std::to_string(msg.arrays.size()) + " arrays but " +
                                std::to_string(frames.size() - first - 1) + " frames follow",
                            ref};
    for (size_t i = 0; i < msg.arrays.size(); ++i) {
        InArray& a = msg.arrays[i];
        // the product is bounded before it can overflow: each factor is checked against the limit
        unsigned __int128 expected = itemsize(a.dtype);
        for (int64_t n : a.shape)
            expected = std::min<unsigned __int128>(expected * static_cast<uint64_t>(n), kMaxArrayBytes + 1);
        if (expected > kMaxArrayBytes)
            throw ProtocolError{"too_large",
                                "array '" + a.name + "' over the limit of " + std::to_string(kMaxArrayBytes) + " bytes",
                                ref};
        a.frame = &frames[first + 1 + i];
        size_t got = zmq_msg_size(const_cast<zmq_msg_t*>(a.frame));
        if (got != static_cast<size_t>(expected))
            throw ProtocolError{"bad_shape",
                                "array '" + a.name + "' needs " + std::to_string(static_cast<uint64_t>(expected)) +
                                    " bytes, the frame has " + std::to_string(got),
                                ref};
    }
}

// An array's first `limit` elements as float, whatever its numeric dtype.
template <typename T>
void widen(const char* p, size_t n, std::vector<float>& out) {
    for (size_t i = 0; i < n; ++i) {
        T v;
        std::memcpy(&v, p + sizeof(T) * i, sizeof(T));
        out[i] = static_cast<float>(v);
    }
}
std::vector<float> as_floats(const InArray& a, size_t limit = SIZE_MAX) {
    const char* p = static_cast<const char*>(zmq_msg_data(const_cast<zmq_msg_t*>(a.frame)));
    size_t n = std::min(limit, zmq_msg_size(const_cast<zmq_msg_t*>(a.frame)) / itemsize(a.dtype));
    std::vector<float> out(n);
    if (a.dtype == "float32")
        widen<float>(p, n, out);
    else if (a.dtype == "float64")
        widen<double>(p, n, out);
    else if (a.dtype == "uint8")
        widen<uint8_t>(p, n, out);
    else if (a.dtype == "int16")
        widen<int16_t>(p, n, out);
    else if (a.dtype == "int32")
        widen<int32_t>(p, n, out);
    else
        widen<int64_t>(p, n, out);
    return out;
}

// ---- msgpack: writing ---------------------------------------------------------------------------

// A msgpack writer over msgpack-c's packer, for the header of one outgoing message.
class Writer {
public:
    Writer() {
        msgpack_sbuffer_init(&buf_);
        msgpack_packer_init(&pk_, &buf_, msgpack_sbuffer_write);
    }
    ~Writer() { msgpack_sbuffer_destroy(&buf_); }
    Writer(const Writer&) = delete;  // it owns its buffer
    Writer& operator=(const Writer&) = delete;
    Writer& map(size_t n) {
        msgpack_pack_map(&pk_, n);
        return *this;
    }
    Writer& list(size_t n) {
        msgpack_pack_array(&pk_, n);
        return *this;
    }
    Writer& str(const std::string& s) {
        msgpack_pack_str(&pk_, s.size());
        msgpack_pack_str_body(&pk_, s.data(), s.size());
        return *this;
    }
    Writer& integer(int64_t v) {
        msgpack_pack_int64(&pk_, v);
        return *this;
    }
    Writer& real(double v) {
        msgpack_pack_double(&pk_, v);
        return *this;
    }
    Writer& boolean(bool v) {
        v ? msgpack_pack_true(&pk_) : msgpack_pack_false(&pk_);
        return *this;
    }
    Writer& nil() {
        msgpack_pack_nil(&pk_);
        return *this;
    }
    Writer& opt_int(std::optional<int64_t> v) { return v ? integer(*v) : nil(); }
    Writer& opt_str(const std::optional<std::string>& v) { return v ? str(*v) : nil(); }
    Writer& opt_real(std::optional<double> v) { return v ? real(*v) : nil(); }
    const char* data() const { return buf_.data; }
    size_t size() const { return buf_.size; }

private:
    msgpack_sbuffer buf_;
    msgpack_packer pk_;
};

// ---- JSON-lines log -----------------------------------------------------------------------------

std::string json_str(const std::string& s) {
    std::string out = "\"";
    for (unsigned char c : s) {
        if (c == '"' || c == '\\')
            out += '\\', out += static_cast<char>(c);
        else if (c < 0x20) {
            char b[8];
            std::snprintf(b, sizeof b, "\\u%04x", c);
            out += b;
        } else
            out += static_cast<char>(c);
    }
    return out + "\"";
}
std::string json_num(double v) {  // JSON has no NaN or infinity: they are written as null
    if (!std::isfinite(v)) return "null";
    char b[32];
    std::snprintf(b, sizeof b, "%.9g", v);
    return b;
}
std::string json_floats(const std::vector<float>& v) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); ++i) out += (i ? "," : "") + json_num(v[i]);
    return out + "]";
}
std::string json_opt_int(std::optional<int64_t> v) { return v ? std::to_string(*v) : "null"; }
std::string json_time(double t) {  // unix seconds, to the microsecond
    char b[32];
    std::snprintf(b, sizeof b, "%.6f", t);
    return b;
}

// The server's JSON-lines log, in the Python server's format: {"t": unix s, "event": ..., ...}. The
// stream records (commands, applied actions) are buffered and flushed every half second; events at once.
class EventLog {
public:
    explicit EventLog(const std::string& path) {
        std::error_code ignored;
        std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ignored);
        file_.open(path, std::ios::app);
        if (!file_) throw ConfigError("cannot open the log file " + path);
    }
    void command(double t, int64_t seq, const std::optional<std::vector<float>>& action,
                 const std::optional<std::string>& refused) {
        file_ << "{\"t\":" << json_time(t) << ",\"event\":\"command\",\"seq\":" << seq
              << ",\"refused\":" << (refused ? json_str(*refused) : "null")
              << ",\"action\":" << (action ? json_floats(*action) : "null") << "}\n";
    }
    void applied(double t, int64_t tick, std::optional<int64_t> command_seq, const std::string& mode,
                 const std::string& watchdog, const std::vector<float>& action) {
        file_ << "{\"t\":" << json_time(t) << ",\"event\":\"applied\",\"tick\":" << tick
              << ",\"command_seq\":" << json_opt_int(command_seq) << ",\"mode\":" << json_str(mode)
              << ",\"watchdog\":" << json_str(watchdog) << ",\"action\":" << json_floats(action) << "}\n";
    }
    // fields: already JSON-encoded values, by key
    void event(double t, const std::string& name, const std::vector<std::pair<std::string, std::string>>& fields) {
        file_ << "{\"t\":" << json_time(t) << ",\"event\":" << json_str(name);
        for (auto& [k, v] : fields) file_ << "," << json_str(k) << ":" << v;
        file_ << "}\n";
        if (name != "error") file_.flush();  // a flood of refused messages waits for the next flush
    }
    void flush() { file_.flush(); }

private:
    std::ofstream file_;
};

double unix_s() { return static_cast<double>(wall_ns()) / 1e9; }

// ---- CURVE ----------------------------------------------------------------------------------------

// A Z85 key from a pyzmq certificate file: the value of `public-key` or `secret-key`.
std::string read_key(const std::string& path, const std::string& which) {
    std::ifstream f(path);
    if (!f) throw ConfigError("key file " + path + " not found");
    std::string line;
    while (std::getline(f, line)) {
        size_t at = line.find(which);
        if (at == std::string::npos || line.compare(0, at, std::string(at, ' ')) != 0) continue;
        size_t q1 = line.find('"', at), q2 = line.rfind('"');
        if (q1 != std::string::npos && q2 > q1 && q2 - q1 - 1 == 40) return line.substr(q1 + 1, 40);
    }
    throw ConfigError(path + " holds no " + which);
}

// The allow-list: the public keys (32 bytes each) of authorized_clients/*.key.
std::set<std::string> authorized_keys(const std::string& keys) {
    std::string dir = keys + "/authorized_clients";
    std::set<std::string> out;
    std::error_code err;
    for (const auto& entry : std::filesystem::directory_iterator(dir, err)) {
        if (entry.path().extension() != ".key") continue;
        uint8_t raw[32];
        if (!zmq_z85_decode(raw, read_key(entry.path().string(), "public-key").c_str()))
            throw ConfigError(entry.path().string() + ": its public-key is not Z85");
        out.insert(std::string(reinterpret_cast<char*>(raw), 32));
    }
    if (out.empty()) throw ConfigError(dir + " holds no client public keys (*.key): no agent could connect");
    return out;
}

// ZeroMQ's ZAP handler (RFC 27) in a thread: it lets in the CURVE clients whose key is allowed.
class Authenticator {
public:
    Authenticator(void* ctx, std::set<std::string> allowed) : allowed_(std::move(allowed)) {
        sock_ = zmq_socket(ctx, ZMQ_REP);
        int linger = 0;
        zmq_setsockopt(sock_, ZMQ_LINGER, &linger, sizeof linger);
        if (zmq_bind(sock_, "inproc://zeromq.zap.01") != 0) throw ConfigError("cannot start the ZAP handler");
        // SIGINT and SIGTERM must reach the control thread, which stops the robot, not this one
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        thread_ = std::thread([this] { run(); });
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
    }
    ~Authenticator() {
        done_ = true;
        thread_.join();
        zmq_close(sock_);
    }

private:
    void run() {
        while (!done_) {
            zmq_pollitem_t item{sock_, 0, ZMQ_POLLIN, 0};
            if (zmq_poll(&item, 1, 100) <= 0) continue;
            std::vector<std::string> frames;
            bool whole = true;
            for (int more = 1; more;) {
                zmq_msg_t m;
                zmq_msg_init(&m);
                if (zmq_msg_recv(&m, sock_, 0) < 0) {
                    zmq_msg_close(&m);
                    whole = false;
                    break;
                }
                frames.emplace_back(static_cast<char*>(zmq_msg_data(&m)), zmq_msg_size(&m));
                more = zmq_msg_more(&m);
                zmq_msg_close(&m);
            }
            if (!whole) continue;  // interrupted: no request to answer
            // version, request id, domain, address, routing id, mechanism, credentials...
            bool ok = frames.size() >= 7 && frames[0] == "1.0" && frames[5] == "CURVE" && allowed_.count(frames[6]);
            std::vector<std::string> reply = {
                "1.0", frames.size() > 1 ? frames[1] : "", ok ? "200" : "400", ok ? "OK" : "client key not allowed", "",
                ""};
            for (size_t i = 0; i < reply.size(); ++i)
                zmq_send(sock_, reply[i].data(), reply[i].size(), i + 1 < reply.size() ? ZMQ_SNDMORE : 0);
        }
    }
    void* sock_;
    std::set<std::string> allowed_;
    std::atomic<bool> done_{false};
    std::thread thread_;
};

// ---- safety ---------------------------------------------------------------------------------------

// A token bucket: sustained `hz` commands per second, with bursts of up to 4.
struct RateLimiter {
    double hz = 0.0, burst = 4.0, tokens = 4.0;
    std::optional<double> last;
    bool allow(double now) {
        if (last) tokens = std::min(burst, tokens + (now - *last) * hz);
        last = now;
        if (tokens >= 1.0) {
            tokens -= 1.0;
            return true;
        }
        return false;
    }
};

struct Pending {
    int64_t seq;
    std::optional<std::vector<float>> action;  // none: an explicit hold
};

// What the wire cannot carry, or the limits cannot be applied to, is refused before anything is served.
void check_spec(const RobotSpec& spec) {
    const std::string robot = "robot '" + spec.name + "': ";
    if (!(spec.control_hz > 0) || !std::isfinite(spec.control_hz))
        throw ConfigError(robot + "control_hz must be > 0 and finite, got " + std::to_string(spec.control_hz));
    if (spec.action_low.empty() || spec.action_low.size() != spec.action_high.size())
        throw ConfigError(robot + "action limits must be of one size, at least 1");
    for (size_t i = 0; i < spec.action_low.size(); ++i)
        if (!std::isfinite(spec.action_low[i]) || !std::isfinite(spec.action_high[i]) ||
            spec.action_low[i] > spec.action_high[i])
            throw ConfigError(robot + "action limits must be finite, low <= high");
    for (const Feature& f : spec.observation) {
        bool fits = itemsize(f.dtype) && f.shape.size() <= kMaxDims &&
                    std::all_of(f.shape.begin(), f.shape.end(),
                                [](int64_t n) { return n >= 0 && n <= int64_t{kMaxArrayBytes}; }) &&
                    f.nbytes() <= kMaxArrayBytes;
        if (!fits || f.name == "applied")
            throw ConfigError(robot + "observation '" + f.name + "' (" + f.dtype +
                              ") cannot go on the wire: dtypes uint8 "
                              "int16 int32 int64 float32 float64, at most 4 dims and 16 MiB, and not named 'applied'");
    }
}

std::string new_session() {
    static std::random_device rd;
    static std::mt19937_64 rng(rd());
    char b[33];
    std::snprintf(b, sizeof b, "%016llx%016llx", static_cast<unsigned long long>(rng()),
                  static_cast<unsigned long long>(rng()));
    return b;
}

// ---- the server -----------------------------------------------------------------------------------

class Server {
public:
    Server(Driver& driver, const ServerConfig& cfg) : driver_(driver), cfg_(cfg), spec_(driver.spec()) {
        if (cfg.keys.empty() && !cfg.insecure && !is_loopback(cfg.bind))
            throw ConfigError("refusing to bind " + cfg.bind +
                              " without CURVE keys: anyone on the network could drive "
                              "the robot. Give --keys DIR (make them with `omniloop keys generate DIR`), bind "
                              "tcp://127.0.0.1, or pass --insecure if this network is yours alone");
        check_spec(spec_);
        const SafetyConfig& s = cfg.safety;
        if (!(s.hold_after_periods > 0) || !(s.safe_after_s > 0) || (s.max_delta && !(*s.max_delta > 0)) ||
            (s.max_command_hz && !(*s.max_command_hz > 0)))
            throw ConfigError("safety: hold_after_periods, safe_after_s, max_delta and max_command_hz must be > 0");
        hold_after_s_ = s.hold_after_periods / spec_.control_hz;
        safe_after_s_ = std::max(s.safe_after_s, hold_after_s_);
        rate_.hz = s.max_command_hz.value_or(4.0 * spec_.control_hz);
        mode_ = s.start_armed ? "armed" : "disarmed";
        ctx_ = zmq_ctx_new();
        bind();
    }
    ~Server() {
        clear_frames();
        if (monitor_) {
            zmq_socket_monitor(socket_, nullptr, 0);
            zmq_close(monitor_);
        }
        if (socket_) zmq_close(socket_);
        auth_.reset();
        zmq_ctx_term(ctx_);
    }
    const std::string& endpoint() const { return endpoint_; }

    void serve(const std::atomic<bool>& stop) {
        if (!cfg_.log.empty()) log_ = std::make_unique<EventLog>(cfg_.log);  // a bad path fails before the driver opens
        driver_.connect();
        if (mode_ == "armed") last_command_t_ = monotonic();  // silence from now on counts
        record("start", {{"robot", json_str(spec_.name)},
                         {"bind", json_str(endpoint_)},
                         {"mode", json_str(mode_)},
                         {"control_hz", json_num(spec_.control_hz)},
                         {"curve", cfg_.keys.empty() ? "false" : "true"}});
        double period = 1.0 / spec_.control_hz, next_tick = monotonic(), next_flush = next_tick + kLogFlushS;
        try {
            while (!stop) {
                bool early = wait_for_tick(next_tick, stop);
                tick();
                double now = monotonic();
                next_tick = early ? now + period : next_tick + period;
                if (log_ && now >= next_flush) {
                    next_flush = now + kLogFlushS;
                    log_->flush();
                }
                if (monotonic() - next_tick > period) {  // the driver or the host fell behind
                    ++counts_["overruns"];
                    next_tick = monotonic();
                }
            }
        } catch (...) {
            finish();
            throw;
        }
        finish();
    }

private:
    // ---- set-up ----
    void bind() {
        socket_ = zmq_socket(ctx_, ZMQ_ROUTER);
        int linger = 0, hwm = kSendHwm, mandatory = 1;
        int64_t maxmsg = kMaxMessageBytes;
        zmq_setsockopt(socket_, ZMQ_LINGER, &linger, sizeof linger);
        zmq_setsockopt(socket_, ZMQ_SNDHWM, &hwm, sizeof hwm);
        zmq_setsockopt(socket_, ZMQ_ROUTER_MANDATORY, &mandatory, sizeof mandatory);
        zmq_setsockopt(socket_, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
        if (!cfg_.keys.empty()) {
            if (!zmq_has("curve")) throw ConfigError("this libzmq was built without CURVE");
            std::string secret_file = cfg_.keys + "/server.key_secret";
            std::string pub = read_key(secret_file, "public-key"), sec = read_key(secret_file, "secret-key");
            // the ZAP handler is up before the socket binds: without one, libzmq lets every CURVE client in
            auth_ = std::make_unique<Authenticator>(ctx_, authorized_keys(cfg_.keys));
            int server = 1;
            if (zmq_setsockopt(socket_, ZMQ_CURVE_SERVER, &server, sizeof server) != 0 ||
                zmq_setsockopt(socket_, ZMQ_CURVE_PUBLICKEY, pub.c_str(), 40) != 0 ||
                zmq_setsockopt(socket_, ZMQ_CURVE_SECRETKEY, sec.c_str(), 40) != 0)
                throw ConfigError(secret_file + ": its keys are not valid Z85 CURVE keys");
            const char* watch = "inproc://omniloop-robot-server-monitor";
            if (zmq_socket_monitor(socket_, watch,
                                   ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) != 0)
                throw ConfigError(std::string("cannot monitor the socket: ") + zmq_strerror(zmq_errno()));
            monitor_ = zmq_socket(ctx_, ZMQ_PAIR);
            zmq_connect(monitor_, watch);
        }
        if (zmq_bind(socket_, cfg_.bind.c_str()) != 0)
            throw ConfigError("cannot bind " + cfg_.bind + ": " + zmq_strerror(zmq_errno()));
        char ep[256] = {};
        size_t n = sizeof ep;
        zmq_getsockopt(socket_, ZMQ_LAST_ENDPOINT, ep, &n);
        endpoint_ = ep;
    }

    void finish() {
        try {
            driver_.safe_state();
        } catch (...) {
        }
        try {
            driver_.disconnect();
        } catch (...) {
        }
        write_log();
        record("stop", {{"ticks", std::to_string(tick_)}});
        if (log_) log_->flush();
    }

    // ---- the loop ----
    // Answer messages until the next tick is due; true if lockstep starts it early.
    bool wait_for_tick(double next_tick, const std::atomic<bool>& stop) {
        double left;
        while ((left = next_tick - monotonic()) > 0 && !stop) {
            auth_events();
            // whole milliseconds for the long waits; the last 2 ms in short naps between checks
            int timeout_ms = left > 0.002 ? static_cast<int>(left * 1000) : 0;
            if (!receive(timeout_ms)) {
                if (timeout_ms == 0)
                    std::this_thread::sleep_for(std::chrono::duration<double>(std::min(kFineWaitS, left)));
                continue;
            }
            handle();
            if (!lockstep_due()) drain(next_tick);
            if (lockstep_due()) return true;
        }
        drain(next_tick);
        return false;
    }
    bool lockstep_due() const { return cfg_.lockstep && pending_ && mode_ == "armed"; }

    // Receive one whole message into frames_, waiting up to timeout_ms (-1: block); false if none.
    // Frames past the most a valid message has (routing id, header, 8 arrays, and one more so that
    // the count is seen to be wrong) are read and dropped unkept: a peer cannot make us hold more.
    bool receive(int timeout_ms) {
        if (timeout_ms != rcvtimeo_) {
            zmq_setsockopt(socket_, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
            rcvtimeo_ = timeout_ms;
        }
        clear_frames();
        int more = 1;
        while (more) {
            frames_.emplace_back();  // a deque: the messages already in it never move
            zmq_msg_init(&frames_.back());
            if (zmq_msg_recv(&frames_.back(), socket_, 0) < 0) {
                clear_frames();  // EAGAIN, nothing in time (a multipart message arrives whole); EINTR, a stop
                return false;
            }
            more = zmq_msg_more(&frames_.back());
            if (more && frames_.size() >= 2 + kMaxArrays + 1) {
                zmq_msg_t extra;
                zmq_msg_init(&extra);
                bool read = true;
                while (more && (read = zmq_msg_recv(&extra, socket_, 0) >= 0)) more = zmq_msg_more(&extra);
                zmq_msg_close(&extra);
                if (!read) {  // interrupted mid-message (a stop): nothing to answer
                    clear_frames();
                    return false;
                }
            }
        }
        return true;
    }
    void clear_frames() {
        for (auto& m : frames_) zmq_msg_close(&m);
        frames_.clear();
    }
    bool waiting() {
        int events = 0;
        size_t n = sizeof events;
        zmq_getsockopt(socket_, ZMQ_EVENTS, &events, &n);
        return events & ZMQ_POLLIN;
    }
    void drain(double next_tick) {
        for (int handled = 0; handled < kDrainMax; ++handled) {
            if (handled && monotonic() >= next_tick) return;
            if (!waiting() || !receive(0)) return;
            handle();
        }
    }

    void tick() {
        double now = monotonic();
        ++tick_;
        std::optional<int64_t> command_seq;
        std::vector<float> applied = act(now, command_seq);
        last_applied_ = applied;
        double t = unix_s();
        std::string mode = mode_, watch = watch_state_;
        auto log_tick = [&] {  // after the observation has left: off the round trip
            write_log();
            if (log_) log_->applied(t, tick_, command_seq, mode, watch, applied);
        };
        try {
            observe(applied, command_seq);
        } catch (...) {
            log_tick();
            throw;
        }
        log_tick();
    }

    std::string watchdog_state(double now) const {
        if (!last_command_t_) return "hold";
        double silence = now - *last_command_t_;
        return silence > safe_after_s_ ? "safe" : silence > hold_after_s_ ? "hold" : "run";
    }

    std::vector<float> checked_applied(std::vector<float> a) const {
        if (a.size() != spec_.action_low.size())
            throw DriverError("the driver reports an applied action of " + std::to_string(a.size()) +
                              " values, its spec says " + std::to_string(spec_.action_low.size()));
        if (!std::all_of(a.begin(), a.end(), [](float v) { return std::isfinite(v); }))
            throw DriverError("the driver reports a non-finite applied action");  // max_delta needs it known
        return a;
    }

    // This tick's action through the driver; sets the seq of the command it obeys.
    std::vector<float> act(double now, std::optional<int64_t>& command_seq) {
        try {
            if (mode_ == "faulted" || safe_) return checked_applied(driver_.safe_state());
            if (mode_ != "armed") return checked_applied(driver_.hold());
            std::string state = watchdog_state(now);
            if (state != watch_state_) {
                double silence = last_command_t_ ? now - *last_command_t_ : 0.0;
                record("watchdog",
                       {{"state", json_str(state)}, {"silence_s", json_num(std::round(silence * 1e4) / 1e4)}});
                watch_state_ = state;
            }
            if (state == "safe") {
                disarm("no command for " + json_num(cfg_.safety.safe_after_s) + " s: safe state", true);
                ++counts_["safe_states"];
                return checked_applied(driver_.safe_state());
            }
            std::optional<Pending> command = pending_ ? pending_ : (state == "run" ? last_command_ : std::nullopt);
            pending_.reset();
            if (command) last_command_ = command;
            if (!command || !command->action) {
                ++counts_["holds"];
                if (command) command_seq = command->seq;
                return checked_applied(driver_.hold());
            }
            std::vector<float> limited = limit(*command->action);
            command_seq = command->seq;
            return checked_applied(driver_.send_action(limited));
        } catch (...) {  // a driver may throw anything: every failure latches a fault
            set_fault("driver failed to act: " + failure());
            command_seq.reset();
            return std::vector<float>(spec_.action_low.size(), NAN);  // what the hardware did is unknown
        }
    }

    // Clip to the last applied action +- max_delta (unless it is unknown), then to [low, high]: the
    // absolute limits come last so that they hold even when the last applied action lay outside them.
    std::vector<float> limit(std::vector<float> a) const {
        const auto& md = cfg_.safety.max_delta;
        bool known = last_applied_ && std::all_of(last_applied_->begin(), last_applied_->end(),
                                                  [](float v) { return std::isfinite(v); });
        if (md && known)
            for (size_t i = 0; i < a.size(); ++i)
                a[i] = std::min(std::max(a[i], static_cast<float>((*last_applied_)[i] - *md)),
                                static_cast<float>((*last_applied_)[i] + *md));
        for (size_t i = 0; i < a.size(); ++i)
            a[i] = std::min(std::max(a[i], spec_.action_low[i]), spec_.action_high[i]);
        return a;
    }

    void observe(const std::vector<float>& applied, std::optional<int64_t> command_seq) {
        Observation obs;
        try {
            obs = driver_.get_observation();
            for (const Feature& f : spec_.observation) {
                auto it = obs.find(f.name);
                if (it == obs.end()) throw DriverError("observation '" + f.name + "' is missing");
                if (it->second.dtype != f.dtype || it->second.shape != f.shape || it->second.nbytes != f.nbytes())
                    throw DriverError("observation '" + f.name + "' does not match its spec (" + f.dtype + ")");
            }
        } catch (...) {
            set_fault("driver get_observation failed: " + failure());
            return;
        }
        if (peer_.empty()) return;
        Writer body;
        body.map(6)
            .str("tick")
            .integer(tick_)
            .str("t_capture_ns")
            .integer(wall_ns())
            .str("command_seq")
            .opt_int(command_seq)
            .str("mode")
            .str(mode_)
            .str("fault")
            .opt_str(fault_)
            .str("watchdog")
            .str(watch_state_);
        std::vector<ArrayView> arrays;
        std::vector<std::string> names;
        for (const Feature& f : spec_.observation) arrays.push_back(obs[f.name]), names.push_back(f.name);
        arrays.push_back({applied.data(), applied.size() * 4, "float32", {static_cast<int64_t>(applied.size())}});
        names.push_back("applied");
        send(peer_, "obs", body, names, arrays);
        obs_sent_ns_[tick_] = perf_ns();
        obs_sent_ns_.erase(tick_ - 256);
    }

    void disarm(const std::string& reason, bool safe = false) {
        if (mode_ == "armed") mode_ = "disarmed";
        safe_ = safe_ || safe;
        pending_.reset();
        last_command_.reset();
        record("disarm", {{"reason", json_str(reason)}, {"safe", safe_ ? "true" : "false"}});
    }

    void set_fault(const std::string& reason) {
        if (mode_ == "faulted") return;  // latched: the first cause is the one that counts
        mode_ = "faulted";
        fault_ = reason;
        pending_.reset();
        last_command_.reset();
        ++counts_["faults"];
        record("fault", {{"reason", json_str(reason)}});
        try {
            driver_.safe_state();
        } catch (...) {  // the fault is latched either way; say that the safe state failed too
            record("fault", {{"reason", json_str("safe_state failed: " + failure())}});
        }
        if (!peer_.empty()) {
            Writer body;
            body.map(1).str("reason").str(reason);
            send(peer_, "fault", body);
        }
    }

    // ---- messages ----
    void handle() {
        std::string peer(static_cast<char*>(zmq_msg_data(&frames_[0])), zmq_msg_size(&frames_[0]));
        Message msg;
        try {
            decode(frames_, 1, msg);
            dispatch(peer, msg);
        } catch (const ProtocolError& e) {
            ++drops_[e.code];
            record("error",
                   {{"code", json_str(e.code)}, {"detail", json_str(e.detail)}, {"ref_seq", json_opt_int(e.seq)}});
            error_reply(peer, e.code, e.detail, e.seq);
        } catch (...) {  // a failure while answering must not stop the robot's clock
            std::string what = failure();
            ++drops_["internal"];
            record("error", {{"code", "\"internal\""}, {"detail", json_str(what)}});
            error_reply(peer, "internal", what, std::nullopt);
        }
    }

    void dispatch(const std::string& peer, const Message& msg) {
        const std::string& kind = msg.type;
        ++counts_["rx_" + kind];
        // optional body fields that must have their type when present; an e-stop is honoured whatever it holds
        auto typed = [&](const char* name, msgpack_object_type type, const char* type_word) {
            const msgpack_object* value = msg.field(name);
            if (value && value->type != MSGPACK_OBJECT_NIL && value->type != type)
                throw ProtocolError{"malformed",
                                    kind + " body: " + name + " must be " + type_word + ", got " + type_name(value),
                                    msg.seq};
        };
        if (kind == "hello") {
            typed("agent", MSGPACK_OBJECT_STR, "str");
            typed("id", MSGPACK_OBJECT_STR, "str");
        }
        if (kind == "arm") typed("clear_fault", MSGPACK_OBJECT_BOOLEAN, "bool");
        if (kind == "hello") return hello(peer, msg);
        if (kind == "status") return status_reply(peer);
        if (kind == "estop") {  // honoured from any authenticated peer, session or not
            const msgpack_object* reason = msg.field("reason");
            set_fault("e-stop from " +
                      (is_str(reason) && reason->via.str.size ? as_str(*reason) : std::string("an agent")));
            return ack(peer, msg);
        }
        static const std::set<std::string> session_types = {"command", "heartbeat", "arm", "disarm", "reset", "bye"};
        if (!session_types.count(kind))
            throw ProtocolError{"unsupported", "'" + kind + "' is a message the robot sends, not one it takes",
                                msg.seq};
        if (session_.empty() || msg.session != session_ || peer != peer_) {
            if (!msg.session.empty() && std::find(replaced_.begin(), replaced_.end(), msg.session) != replaced_.end())
                throw ProtocolError{"replaced", "a later hello replaced this session", msg.seq};
            throw ProtocolError{"no_session", "no session with this peer: send hello first", msg.seq};
        }
        if (msg.seq <= peer_seq_)
            throw ProtocolError{
                "old_seq", "seq " + std::to_string(msg.seq) + " is not after " + std::to_string(peer_seq_), msg.seq};
        peer_seq_ = msg.seq;
        if (kind == "command") return command(msg);
        if (kind == "heartbeat") {
            Writer body;
            body.map(2).str("echo_t_ns").integer(msg.t_ns).str("echo_seq").integer(msg.seq);
            return send(peer, "heartbeat", body);
        }
        if (kind == "arm") return arm(peer, msg);
        if (kind == "disarm") {
            disarm("asked by the agent");
            return ack(peer, msg);
        }
        if (kind == "reset") {
            if (!spec_.can_reset)
                throw ProtocolError{"unsupported", "robot '" + spec_.name + "' cannot reset its scene", msg.seq};
            try {
                driver_.reset();
            } catch (...) {
                set_fault("driver reset failed: " + failure());
                throw ProtocolError{"faulted", *fault_, msg.seq};
            }
            last_applied_.reset();
            pending_.reset();
            last_command_.reset();
            return ack(peer, msg);
        }
        // bye
        record("bye", {{"session", json_str(session_)}});
        ack(peer, msg);
        session_.clear();
        peer_.clear();
        pending_.reset();
        last_command_.reset();
        if (mode_ == "armed" && !cfg_.safety.start_armed) disarm("bye: the agent left");  // the next one arms first
    }

    void hello(const std::string& peer, const Message& msg) {
        if (!session_.empty()) {
            record("session_replaced", {{"old", json_str(session_)}});
            replaced_.push_back(session_);
            if (replaced_.size() > 8) replaced_.pop_front();
        }
        session_ = new_session();
        peer_ = peer;
        peer_seq_ = msg.seq;
        pending_.reset();
        last_command_.reset();
        // a new session finds the robot as the server started it: unless it starts armed, it arms first
        if (mode_ == "armed" && !cfg_.safety.start_armed) disarm("a new session");
        const msgpack_object* agent = msg.field("agent");
        const msgpack_object* id = msg.field("id");
        record("hello", {{"session", json_str(session_)},
                         {"agent", json_str(is_str(agent) ? as_str(*agent).substr(0, 80) : "?")},
                         {"agent_id", json_str(is_str(id) ? as_str(*id).substr(0, 64) : "")}});
        Writer body;
        body.map(6).str("session").str(session_).str("spec");
        write_spec(body);
        body.str("mode")
            .str(mode_)
            .str("fault")
            .opt_str(fault_)
            .str("limits")
            .map(6)
            .str("hold_after_s")
            .real(hold_after_s_)
            .str("safe_after_s")
            .real(safe_after_s_)
            .str("max_delta")
            .opt_real(cfg_.safety.max_delta)
            .str("max_command_hz")
            .real(rate_.hz)
            .str("max_message_bytes")
            .integer(kMaxMessageBytes)
            .str("max_array_bytes")
            .integer(kMaxArrayBytes)
            .str("echo_t_ns")
            .integer(msg.t_ns);
        send(peer, "welcome", body);
    }

    void write_spec(Writer& w) const {
        w.map(6)
            .str("name")
            .str(spec_.name)
            .str("control_hz")
            .real(spec_.control_hz)
            .str("can_reset")
            .boolean(spec_.can_reset);
        w.str("observation").map(spec_.observation.size());
        for (const Feature& f : spec_.observation) {
            w.str(f.name).map(4).str("shape").list(f.shape.size());
            for (int64_t n : f.shape) w.integer(n);
            w.str("dtype").str(f.dtype).str("low").opt_real(f.low).str("high").opt_real(f.high);
        }
        w.str("action").map(3).str("low").list(spec_.action_low.size());
        for (float v : spec_.action_low) w.real(v);
        w.str("high").list(spec_.action_high.size());
        for (float v : spec_.action_high) w.real(v);
        w.str("names").list(spec_.action_names.size());
        for (auto& n : spec_.action_names) w.str(n);
        w.str("extra").map(spec_.pose ? 1 : 0);
        if (const auto& pose = spec_.pose) {
            w.str("pose").map(4).str("position").list(pose->position.size());
            for (int64_t i : pose->position) w.integer(i);
            w.str("velocity").list(pose->velocity.size());
            for (int64_t i : pose->velocity) w.integer(i);
            w.str("continuous").list(pose->continuous.size());
            for (bool c : pose->continuous) w.boolean(c);
            w.str("action").str(pose->action);
        }
    }

    void command(const Message& msg) {
        std::optional<std::vector<float>> action;
        try {
            action = checked_action(msg);
        } catch (const ProtocolError& e) {
            if (log_) {
                const InArray* raw = msg.array("action");
                std::optional<std::vector<float>> seen;
                if (raw) seen = as_floats(*raw, 16);  // a hostile 16 MiB action costs nothing to log
                unlogged_.push_back({unix_s(), msg.seq, seen, e.code});
            }
            throw;
        }
        const msgpack_object* obs_tick = msg.field("obs_tick");
        if (is_int(obs_tick)) {
            auto sent = obs_sent_ns_.find(as_int(*obs_tick));
            if (sent != obs_sent_ns_.end()) {
                rtts_us_.push_back((perf_ns() - sent->second) / 1000.0);
                if (rtts_us_.size() > kRttWindow) rtts_us_.pop_front();
            }
        }
        pending_ = Pending{msg.seq, action};
        last_command_t_ = monotonic();
        ++counts_["commands"];
        if (log_) unlogged_.push_back({unix_s(), msg.seq, action, std::nullopt});
    }

    // The command's action (none for a hold), after every check; the rate limit comes last, so a
    // command refused for its content costs no rate budget.
    std::optional<std::vector<float>> checked_action(const Message& msg) {
        if (mode_ == "faulted")
            throw ProtocolError{"faulted", "fault latched (" + *fault_ + "); send arm with clear_fault", msg.seq};
        if (mode_ != "armed")
            throw ProtocolError{"disarmed", "the robot is disarmed: observations only; send arm", msg.seq};
        const msgpack_object* obs_tick = msg.field("obs_tick");
        const msgpack_object* hold = msg.field("hold");
        bool tick_ok = !obs_tick || obs_tick->type == MSGPACK_OBJECT_NIL || is_int(obs_tick);
        bool hold_ok = !hold || hold->type == MSGPACK_OBJECT_BOOLEAN;
        if (!tick_ok || !hold_ok)
            throw ProtocolError{"malformed", "command body: obs_tick must be an int, hold a bool", msg.seq};
        std::optional<std::vector<float>> action;
        if (!(hold && hold->via.boolean)) {
            const InArray* a = msg.array("action");
            size_t dim = spec_.action_low.size();
            if (!a || a->shape.size() != 1 || a->shape[0] != static_cast<int64_t>(dim))
                throw ProtocolError{"bad_shape", "action must be float [" + std::to_string(dim) + "]", msg.seq};
            action = as_floats(*a);
            for (float v : *action)
                if (!std::isfinite(v))
                    throw ProtocolError{"not_finite", "action holds NaN or inf: " + json_floats(*action), msg.seq};
        }
        if (!rate_.allow(monotonic()))
            throw ProtocolError{"rate_limited", "more than " + json_num(rate_.hz) + " commands/s", msg.seq};
        return action;
    }

    void arm(const std::string& peer, const Message& msg) {
        const msgpack_object* clear = msg.field("clear_fault");
        bool clear_fault = clear && clear->type == MSGPACK_OBJECT_BOOLEAN && clear->via.boolean;
        if (fault_ && !clear_fault)
            throw ProtocolError{"faulted", "fault latched (" + *fault_ + "); arm with clear_fault to re-arm", msg.seq};
        if (fault_) record("fault_cleared", {{"fault", json_str(*fault_)}});
        mode_ = "armed";
        fault_.reset();
        safe_ = false;
        pending_.reset();
        last_command_.reset();  // nothing sent before the arm is applied after it
        last_command_t_ = monotonic();
        watch_state_ = "run";
        record("arm", {{"session", json_str(session_)}});
        ack(peer, msg);
    }

    // Count and log the handshakes that CURVE refused since the last look (a key not on the list, no
    // key, the wrong server key), from the socket's monitor, as the Python server does.
    void auth_events() {
        if (!monitor_) return;
        for (;;) {
            zmq_msg_t event, address;
            zmq_msg_init(&event);
            zmq_msg_init(&address);
            bool got = zmq_msg_recv(&event, monitor_, ZMQ_DONTWAIT) >= 0 && zmq_msg_more(&event) &&
                       zmq_msg_recv(&address, monitor_, 0) >= 0;
            if (got && zmq_msg_size(&event) >= 2) {
                uint16_t id;
                std::memcpy(&id, zmq_msg_data(&event), 2);
                std::string where(static_cast<char*>(zmq_msg_data(&address)), zmq_msg_size(&address));
                ++counts_["auth_refused"];
                record("auth_refused", {{"zmq_event", std::to_string(id)}, {"endpoint", json_str(where)}});
            }
            zmq_msg_close(&event);
            zmq_msg_close(&address);
            if (!got) return;
        }
    }

    // ---- replies, status, log ----
    void ack(const std::string& peer, const Message& msg) {
        Writer body;
        body.map(3).str("ref_seq").integer(msg.seq).str("type").str(msg.type).str("mode").str(mode_);
        send(peer, "ack", body);
    }
    void error_reply(const std::string& peer, const std::string& code, const std::string& detail,
                     std::optional<int64_t> ref) {
        Writer body;
        body.map(3).str("code").str(code).str("detail").str(detail).str("ref_seq").opt_int(ref);
        send(peer, "error", body);
    }
    void status_reply(const std::string& peer) {
        Writer body;
        body.map(8)
            .str("mode")
            .str(mode_)
            .str("fault")
            .opt_str(fault_)
            .str("watchdog")
            .str(watch_state_)
            .str("tick")
            .integer(tick_)
            .str("session")
            .str(session_)
            .str("counts")
            .map(counts_.size());
        for (auto& [k, v] : counts_) body.str(k).integer(v);
        body.str("drops").map(drops_.size());
        for (auto& [k, v] : drops_) body.str(k).integer(v);
        body.str("rtt_us");
        if (rtts_us_.empty()) {
            body.nil();
        } else {
            std::vector<double> r(rtts_us_.begin(), rtts_us_.end());
            std::sort(r.begin(), r.end());
            auto pct = [&](double q) {  // linear interpolation between ranks, as numpy's percentile
                double pos = q * (r.size() - 1);
                size_t lo = static_cast<size_t>(pos);
                return r[lo] + (r[std::min(lo + 1, r.size() - 1)] - r[lo]) * (pos - lo);
            };
            body.map(3).str("p50").real(pct(0.5)).str("p99").real(pct(0.99)).str("n").integer(r.size());
        }
        send(peer, "status", body);
    }

    // One message to `peer`: the header (body already packed), then the arrays' bytes. Never blocks:
    // a full queue or a gone peer is counted as a drop.
    void send(const std::string& peer, const std::string& type, const Writer& body,
              const std::vector<std::string>& names = {}, const std::vector<ArrayView>& arrays = {}) {
        Writer h;
        h.map(7)
            .str("v")
            .integer(kVersion)
            .str("type")
            .str(type)
            .str("seq")
            .integer(++seq_)
            .str("t_ns")
            .integer(wall_ns())
            .str("session")
            .str(session_)
            .str("body");
        std::string header(h.data(), h.size());
        header.append(body.data(), body.size());
        Writer tail;
        tail.str("arrays").list(arrays.size());
        for (size_t i = 0; i < arrays.size(); ++i) {
            tail.map(3)
                .str("name")
                .str(names[i])
                .str("dtype")
                .str(arrays[i].dtype)
                .str("shape")
                .list(arrays[i].shape.size());
            for (int64_t n : arrays[i].shape) tail.integer(n);
        }
        header.append(tail.data(), tail.size());
        const int flags = ZMQ_DONTWAIT;
        if (zmq_send(socket_, peer.data(), peer.size(), flags | ZMQ_SNDMORE) < 0) return count_send_failure();
        if (zmq_send(socket_, header.data(), header.size(), flags | (arrays.empty() ? 0 : ZMQ_SNDMORE)) < 0)
            return count_send_failure();
        for (size_t i = 0; i < arrays.size(); ++i)
            if (zmq_send(socket_, arrays[i].data, arrays[i].nbytes, flags | (i + 1 < arrays.size() ? ZMQ_SNDMORE : 0)) <
                0)
                return count_send_failure();
    }
    void count_send_failure() {
        int err = zmq_errno();
        if (err == EAGAIN)
            ++drops_["send_queue_full"];  // the agent reads slower than we send
        else if (err == EHOSTUNREACH)
            ++drops_["peer_gone"];  // the agent disconnected
        else
            throw std::runtime_error(std::string("send failed: ") + zmq_strerror(err));
    }

    void write_log() {
        if (!log_) return;
        for (auto& c : unlogged_) log_->command(c.t, c.seq, c.action, c.refused);
        unlogged_.clear();
    }
    void record(const std::string& event, const std::vector<std::pair<std::string, std::string>>& fields) {
        if (log_) log_->event(unix_s(), event, fields);
    }

    struct Unlogged {
        double t;
        int64_t seq;
        std::optional<std::vector<float>> action;
        std::optional<std::string> refused;
    };

    Driver& driver_;
    ServerConfig cfg_;
    const RobotSpec& spec_;
    double hold_after_s_ = 0, safe_after_s_ = 0;
    RateLimiter rate_;
    std::string mode_, watch_state_ = "run", session_, peer_, endpoint_;
    std::optional<std::string> fault_;
    bool safe_ = false;
    int64_t peer_seq_ = -1, tick_ = 0, seq_ = 0;
    std::deque<std::string> replaced_;
    std::optional<Pending> pending_, last_command_;
    std::optional<std::vector<float>> last_applied_;
    std::optional<double> last_command_t_;
    std::map<std::string, int64_t> counts_, drops_;
    std::deque<double> rtts_us_;
    std::map<int64_t, int64_t> obs_sent_ns_;
    std::vector<Unlogged> unlogged_;
    std::unique_ptr<EventLog> log_;
    std::unique_ptr<Authenticator> auth_;
    void* monitor_ = nullptr;  // refused CURVE handshakes, with keys only
    void* ctx_ = nullptr;
    void* socket_ = nullptr;
    int rcvtimeo_ = -2;             // the socket's RCVTIMEO as last set: none yet
    std::deque<zmq_msg_t> frames_;  // the message being handled: routing id, header, arrays
};

}  // namespace

size_t Feature::nbytes() const {
    size_t n = itemsize(dtype);
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    return n;
}

bool is_loopback(const std::string& endpoint) {
    size_t sep = endpoint.find("://");
    if (sep == std::string::npos) return false;
    std::string transport = endpoint.substr(0, sep), address = endpoint.substr(sep + 3);
    if (transport == "ipc" || transport == "inproc") return true;
    if (transport != "tcp") return false;
    std::string host = address.substr(0, address.rfind(':'));
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    if (host == "localhost") return true;
    in_addr v4;
    in6_addr v6;
    if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;  // 127.0.0.0/8
    return inet_pton(AF_INET6, host.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
}

void serve(Driver& driver, const ServerConfig& cfg, const std::atomic<bool>& stop,
           void (*on_bound)(const std::string& endpoint, const RobotSpec& spec)) {
    Server server(driver, cfg);
    if (on_bound) on_bound(server.endpoint(), driver.spec());
    server.serve(stop);
}

}  // namespace omniloop
