"""The bridge between the agent and a real robot, over ZeroMQ (`docs/bridge-protocol.md`).

`robot_bridge/` owns
* the wire protocol (`protocol`): a msgpack header and raw array frames, versioned, checked, never
  unpickled; the robot's spec (`spec`);
* the robot-side server (`server`), which owns the control clock and safety (`safety`: limits,
  watchdog, rate limit, latched faults), and the drivers it runs: the `Driver` and `Sensor`
  interfaces (`driver`), a MuJoCo task served as a real-time robot, an OpenCV camera and a
  sounddevice microphone (`drivers/`); CURVE keys (`keys`);
* the agent-side client (`client`): `RemoteRobotEnv`, a Gymnasium env with the robot's observation
  dict, so the loop drives a robot as it drives a simulation;
* a second robot-side server in C++ (`cpp/`, not a Python module), for drivers written in C++: the
  same protocol and safety, on libzmq and msgpack-c.

`robot_bridge/` may import numpy, pyzmq, msgspec, gymnasium, opencv and sounddevice, and `sim/`
only in the simulated robot's driver (`drivers/sim.py`); never torch, agent/, worldmodel/ or planner/.
"""
