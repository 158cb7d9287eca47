// The robot side of the omniloop bridge, in C++: the protocol of docs/bridge-protocol.md with the
// same safety as the Python server (robot_bridge/server.py), for robots whose drivers are C++.
//
// A driver follows the Python `Driver` (robot_bridge/driver.py): spec, connect, disconnect,
// get_observation, send_action (returns what was really applied), hold, safe_state, reset. The
// server owns timing and safety and calls the driver from one thread. Link your driver with
// robot_server.cpp and call `serve` (main.cpp shows how, with the built-in `memory` driver).
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace omniloop {

// Hardware that is missing, refuses to open or stops answering: the message says which and why.
struct DriverError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// One observation stream, as in robot_bridge/spec.py: e.g. image (64, 64, 3) uint8.
struct Feature {
    std::string name;
    std::vector<int64_t> shape;
    std::string dtype;  // one of the protocol's: uint8 int16 int32 int64 float32 float64
    std::optional<double> low, high;
    size_t nbytes() const;
};

// Where the robot's joints are, for an agent that moves it to a pose (`extra.pose` in the protocol's spec):
// indices into `proprio`, one per action dimension in the action's order.
struct Pose {
    std::vector<int64_t> position, velocity;  // velocity may be empty
    std::vector<bool> continuous;             // per joint: it turns freely (its error wraps into [-pi, pi])
    std::string action = "position";          // or "effort": what an action means
};

struct RobotSpec {
    std::string name;
    double control_hz = 20.0;
    std::vector<Feature> observation;
    std::vector<float> action_low, action_high;  // finite, one per action dimension
    std::vector<std::string> action_names;
    bool can_reset = false;
    std::optional<Pose> pose;  // without it the robot can be driven, but not replayed onto a pose
};

// A view of one array a driver hands out; its bytes must stay valid until the next driver call
// (the server sends, and so copies, them before it calls the driver again).
struct ArrayView {
    const void* data = nullptr;
    size_t nbytes = 0;
    std::string dtype;
    std::vector<int64_t> shape;
};
using Observation = std::map<std::string, ArrayView>;

class Driver {
public:
    virtual ~Driver() = default;
    virtual const RobotSpec& spec() const = 0;
    virtual void connect() = 0;  // a missing device throws DriverError here, not on the first step
    virtual void disconnect() = 0;
    virtual Observation get_observation() = 0;
    // apply an action already inside the limits; return what was really applied
    virtual std::vector<float> send_action(const std::vector<float>& action) = 0;
    virtual std::vector<float> hold() = 0;  // stay put for one period: what that means is the driver's
    virtual std::vector<float> safe_state() { return hold(); }  // called every period while faulted: idempotent
    virtual void reset() { throw DriverError("robot '" + spec().name + "' cannot reset its scene"); }
};

struct SafetyConfig {
    double hold_after_periods = 3.0;       // no valid command for this many control periods: hold
    double safe_after_s = 1.0;             // no valid command for this long: safe state, and disarm
    std::optional<double> max_delta;       // largest change of any action dimension per period
    std::optional<double> max_command_hz;  // default: 4x the control rate
    bool start_armed = false;
};

struct ServerConfig {
    std::string bind = "tcp://127.0.0.1:5555";
    std::string keys;       // folder from `omniloop keys generate`; empty: no CURVE
    bool insecure = false;  // allow a non-loopback bind without keys
    bool lockstep = false;  // a valid command also starts the tick at once
    std::string log;        // JSON-lines log of every command, applied action and event; empty: none
    SafetyConfig safety;
};

// Binding beyond loopback without keys and without `insecure`; or a keys folder that is not usable.
struct ConfigError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Serve `driver` until `stop` becomes true. `on_bound` is called once with the endpoint bound (a
// port of 0 is resolved), before the first tick. Throws ConfigError (what was asked cannot be served)
// or what the driver's connect throws, before serving; while serving, a driver's failure latches a
// fault instead, and only a socket that fails to send ends the loop, with the driver in its safe state.
void serve(Driver& driver, const ServerConfig& cfg, const std::atomic<bool>& stop,
           void (*on_bound)(const std::string& endpoint, const RobotSpec& spec) = nullptr);

bool is_loopback(const std::string& endpoint);

}  // namespace omniloop
