// omniloop-robot-server: the C++ robot side of the bridge, with its built-in drivers.
//
//   omniloop-robot-server --driver memory [--bind ENDPOINT] [--keys DIR] [--insecure] [--lockstep]
//                         [--log FILE] [--hz HZ] [--image] [--start-armed] [--hold-after-periods N]
//                         [--safe-after-s S] [--max-delta D] [--max-command-hz HZ]
//
// `memory` is a robot whose joints and camera are memory: what it applies it reports, and what it sees
// is a fixed frame that changes one byte per tick. It measures the bridge (benchmarks/bridge.py) and is
// the template for a driver of your own: subclass omniloop::Driver and add it to `make_driver`.

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "robot_server.hpp"

namespace {

std::atomic<bool> stop_requested{false};  // set by SIGINT and SIGTERM: the server stops at its next check
static_assert(std::atomic<bool>::is_always_lock_free, "a signal handler may only store to a lock-free atomic");

class MemoryDriver : public omniloop::Driver {
public:
    MemoryDriver(double control_hz, bool image) : proprio_(8, 0.0f), image_(image ? 64 * 64 * 3 : 0, 0) {
        spec_.name = "memory";
        spec_.control_hz = control_hz;
        spec_.observation.push_back({"proprio", {8}, "float32", std::nullopt, std::nullopt});
        if (image) spec_.observation.push_back({"image", {64, 64, 3}, "uint8", 0.0, 255.0});
        spec_.action_low = {-1.0f, -1.0f};
        spec_.action_high = {1.0f, 1.0f};
        spec_.pose = omniloop::Pose{{0, 1}, {}, {false, false}, "position"};  // it goes where it is told, at once
    }
    const omniloop::RobotSpec& spec() const override { return spec_; }
    void connect() override { ticks_ = 0; }
    void disconnect() override {}
    omniloop::Observation get_observation() override {
        omniloop::Observation obs;
        obs["proprio"] = {proprio_.data(), proprio_.size() * sizeof(float), "float32", {8}};
        if (!image_.empty()) {
            image_[0] = static_cast<uint8_t>(ticks_ % 256);
            obs["image"] = {image_.data(), image_.size(), "uint8", {64, 64, 3}};
        }
        return obs;
    }
    std::vector<float> send_action(const std::vector<float>& action) override {
        ++ticks_;
        proprio_[0] = action[0];
        proprio_[1] = action[1];
        return action;
    }
    std::vector<float> hold() override { return send_action({0.0f, 0.0f}); }

private:
    omniloop::RobotSpec spec_;
    std::vector<float> proprio_;
    std::vector<uint8_t> image_;
    long ticks_ = 0;
};

struct Options {
    std::string driver;
    double hz = 20.0;
    bool image = false;
    omniloop::ServerConfig server;
};

[[noreturn]] void usage_error(const std::string& what) {
    std::fprintf(stderr, "omniloop-robot-server: error: %s (see the top of robot_bridge/cpp/main.cpp)\n", what.c_str());
    std::exit(2);
}

double positive(const char* flag, const char* text) {
    char* end = nullptr;
    double v = std::strtod(text, &end);
    if (end == text || *end || !(v > 0)) usage_error(std::string(flag) + " must be a number > 0, got '" + text + "'");
    return v;
}

Options parse(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) usage_error(a + " needs a value");
            return argv[++i];
        };
        if (a == "--driver")
            o.driver = value();
        else if (a == "--bind")
            o.server.bind = value();
        else if (a == "--keys")
            o.server.keys = value();
        else if (a == "--log")
            o.server.log = value();
        else if (a == "--insecure")
            o.server.insecure = true;
        else if (a == "--lockstep")
            o.server.lockstep = true;
        else if (a == "--start-armed")
            o.server.safety.start_armed = true;
        else if (a == "--image")
            o.image = true;
        else if (a == "--hz")
            o.hz = positive("--hz", value());
        else if (a == "--hold-after-periods")
            o.server.safety.hold_after_periods = positive("--hold-after-periods", value());
        else if (a == "--safe-after-s")
            o.server.safety.safe_after_s = positive("--safe-after-s", value());
        else if (a == "--max-delta")
            o.server.safety.max_delta = positive("--max-delta", value());
        else if (a == "--max-command-hz")
            o.server.safety.max_command_hz = positive("--max-command-hz", value());
        else
            usage_error("unknown option " + a);
    }
    if (o.driver.empty()) usage_error("--driver is required (built in: memory)");
    return o;
}

std::unique_ptr<omniloop::Driver> make_driver(const Options& o) {
    if (o.driver == "memory") return std::make_unique<MemoryDriver>(o.hz, o.image);
    usage_error("unknown driver '" + o.driver + "' (built in: memory)");
}

void announce(const std::string& endpoint, const omniloop::RobotSpec& spec) {
    // the same first line as `omniloop robot-server`, which tests and scripts read the endpoint from
    std::printf("serving %s at %s: %g Hz (C++ server)\n", spec.name.c_str(), endpoint.c_str(), spec.control_hz);
    std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
    Options options = parse(argc, argv);
    std::signal(SIGINT, [](int) { stop_requested = true; });
    std::signal(SIGTERM, [](int) { stop_requested = true; });
    try {
        std::unique_ptr<omniloop::Driver> driver = make_driver(options);
        omniloop::serve(*driver, options.server, stop_requested, announce);
    } catch (const omniloop::ConfigError& e) {  // what the user asked for cannot be served: as a usage error
        std::fprintf(stderr, "omniloop-robot-server: error: %s\n", e.what());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "omniloop-robot-server: error: %s\n", e.what());
        return 1;
    } catch (...) {  // a driver's connect may throw anything
        std::fprintf(stderr,
                     "omniloop-robot-server: error: the driver threw an exception that is not a std::exception\n");
        return 1;
    }
    return 0;
}
