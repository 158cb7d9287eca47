"""The robot bridge, with real processes on loopback: `omniloop robot-server` in one, the agent or a
raw ZeroMQ peer in another. Timings are measured and printed; the bounds are loose on purpose."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from agent.metrics import read_metrics
from robot_bridge import protocol as p
from robot_bridge.client import RemoteRobotEnv, RobotClient, RobotFault
from robot_bridge.config import BridgeConfig
from robot_bridge.driver import DriverError
from robot_bridge.drivers.camera import Camera
from robot_bridge.drivers.microphone import Microphone

ROOT = Path(__file__).resolve().parent.parent
PERIOD = 0.05  # the sim arm's control period


class RawPeer:
    """A DEALER that sends whatever frames it is given, for the malformed-message tests."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.seq, self.session = 0, ""

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def message(self, kind: str, body: dict | None = None, arrays: dict | None = None, seq: int | None = None) -> list:
        self.seq = self.seq + 1 if seq is None else seq
        return p.encode(p.Message(kind, self.seq, body or {}, arrays or {}, self.session))

    def reply(self, wanted=lambda m: True, timeout: float = 2.0) -> p.Message:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self.sock.poll(int(left * 1000)):
                msg = p.decode(self.sock.recv_multipart())
                if wanted(msg):
                    return msg
        raise AssertionError("no reply")

    def error_for(self, frames: list[bytes]) -> str:
        self.send(frames)
        return self.reply(lambda m: m.type == p.ERROR).body["code"]

    def hello(self) -> p.Message:
        self.send(self.message(p.HELLO, {"agent": "test"}))
        welcome = self.reply(lambda m: m.type == p.WELCOME)
        self.session = welcome.session
        return welcome


# The safety rules hold on both robot-side servers: the Python one (the sim arm, without its camera) and
# the C++ one (robot_bridge/cpp, its memory arm). Both arms take 2 actions in [-1, 1] at 20 Hz and hold
# with zero, so the same test reads the same numbers from either.
CPP_SAFETY_FLAGS = {"max_delta": "--max-delta", "max_command_hz": "--max-command-hz", "safe_after_s": "--safe-after-s"}


@pytest.fixture(params=["python", "cpp"])
def robot(request, server):
    """Start a robot server: robot(*extra_args, bind=..., **safety), e.g. robot(max_delta=0.5)."""
    if request.param == "python":
        def start(*extra: str, bind: str = "tcp://127.0.0.1:0", **safety):
            return server("--driver", "sim", "driver_options.pixels=false",
                          *[f"safety.{k}={v}" for k, v in safety.items()], *extra, bind=bind)
    else:
        program = [str(request.getfixturevalue("cpp_server"))]

        def start(*extra: str, bind: str = "tcp://127.0.0.1:0", **safety):
            flags = [x for k, v in safety.items() for x in (CPP_SAFETY_FLAGS[k], str(v))]
            return server("--driver", "memory", "--hz", "20", *flags, *extra, bind=bind, program=program)
    return start


# ---- the agent learns through the bridge --------------------------------------------------------

SMALL = ["run.seed_steps=100", "run.warmup_updates=20", "learner.batch_size=16", "planner.samples=64",
         "planner.iterations=2", "run.checkpoint_every=2", "run.video=false"]


def test_the_agent_learns_through_the_bridge_against_the_sim_driver(server, tmp_path):
    srv = server("--driver", "sim")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "agent.cli", "robot", "--connect", srv.endpoint, "--steps", "300", "--out", str(run_dir),
           "--no-progress", *SMALL]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    rows = read_metrics(run_dir / "metrics.csv")
    assert [r["env_step"] for r in rows] == [50, 100, 150, 200, 250, 300]  # configs/robot.yaml: 50-step episodes
    assert rows[-1]["updates"] >= 200 and rows[-1]["skipped_updates"] == 0
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses  # it learned something
    # the reward is the objective's, computed from the robot's proprio: the same shape as Reach's
    assert all(0.0 <= r["return"] <= 50.0 for r in rows) and "stale_holds" in rows[-1]

    from agent.episodes import read_episode

    episode = read_episode(sorted((run_dir / "episodes").glob("*.mcap"))[-1])
    assert episode.metadata["env"].startswith("robot:sim:reach@tcp://127.0.0.1:")
    steps = episode.steps
    assert len(steps) == 50
    for step in steps:
        assert step.action_requested is not None and step.action_sent is not None and step.action_applied is not None
        assert np.all(np.abs(step.action_applied) <= 1.0 + 1e-6)
    commands, applied = srv.events("command"), srv.events("applied")
    assert len(commands) >= 290 and len(applied) >= len(commands)  # every command and every tick is logged


# ---- the watchdog --------------------------------------------------------------------------------

AGENT = """
import sys, numpy as np
from robot_bridge.client import RemoteRobotEnv
from robot_bridge.config import BridgeConfig
env = RemoteRobotEnv(BridgeConfig(connect=sys.argv[1]))
env.reset()
print("driving", flush=True)
while True:
    env.step(np.array([0.5, -0.5], np.float32))
"""


def test_killing_the_agent_makes_the_server_hold_within_the_watchdog_time(robot):
    srv = robot()
    agent = subprocess.Popen([sys.executable, "-c", AGENT, srv.endpoint], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline().strip() == "driving"
        time.sleep(0.5)
    finally:  # never leave the driving agent behind, also when it failed to start
        agent.kill()
        agent.wait()
    hold_after = 3 * PERIOD  # the default: three control periods
    deadline = time.monotonic() + 5
    holds = []
    while not holds and time.monotonic() < deadline:
        time.sleep(0.05)
        events = srv.events()  # the watchdog's event is flushed at once, with the commands before it
        commands = [e["t"] for e in events if e["event"] == "command"]
        last_command = max(commands, default=math.inf)  # the killed agent's last word
        holds = [e for e in events if e["event"] == "watchdog" and e["state"] == "hold" and e["t"] > last_command]
    assert holds, "the server never held"
    measured = holds[0]["t"] - last_command  # the server's own clock on both ends
    print(f"held {measured * 1000:.0f} ms after the last command of the killed agent (watchdog {hold_after * 1000:.0f} ms)")
    # the first tick past the watchdog time, give or take a tick that a loaded machine runs late
    assert hold_after <= measured <= hold_after + PERIOD + 0.15
    time.sleep(1.2)  # the default safe_after_s is 1 s: a longer silence disarms into the safe state
    assert [e for e in srv.events("watchdog") if e["state"] == "safe"] and srv.events("disarm")


# ---- malformed messages --------------------------------------------------------------------------

def test_malformed_messages_get_an_error_reply_or_a_counted_drop_and_the_server_stays_up(robot):
    srv = robot()
    peer = RawPeer(srv.endpoint)
    peer.hello()
    peer.send(peer.message(p.ARM))
    peer.reply(lambda m: m.type == p.ACK)
    good = lambda **kw: peer.message(p.COMMAND, {"obs_tick": 0}, {"action": np.zeros(2, np.float32)}, **kw)  # noqa: E731

    assert peer.error_for([os.urandom(200)]) == p.MALFORMED  # random bytes
    assert peer.error_for([good()[0][:10], good()[1]]) == p.MALFORMED  # a truncated header
    frames = good()
    assert peer.error_for([frames[0]]) == p.MALFORMED  # the array frame is missing
    frames = good()
    assert peer.error_for([frames[0], bytes(frames[1])[:5]]) == p.BAD_SHAPE  # a truncated array
    header = {"v": 99, "type": "command", "seq": 1000, "t_ns": 0, "session": peer.session, "body": {}, "arrays": []}
    import msgspec

    assert peer.error_for([msgspec.msgpack.encode(header)]) == p.BAD_VERSION
    assert peer.error_for([msgspec.msgpack.encode({**header, "v": 1, "type": "teleport"})]) == p.UNKNOWN_TYPE
    assert peer.error_for(peer.message(p.COMMAND, {}, {"action": np.zeros(3, np.float32)})) == p.BAD_SHAPE
    assert peer.error_for(peer.message(p.COMMAND, {}, {"action": np.array([np.nan, 0], np.float32)})) == p.NOT_FINITE
    assert peer.error_for(peer.message(p.COMMAND, {}, {"action": np.array([np.inf, 0], np.float32)})) == p.NOT_FINITE
    assert peer.error_for([msgspec.msgpack.encode({**header, "v": 1, "pad": "x" * (p.MAX_HEADER_BYTES + 1)})]) == p.TOO_LARGE
    big = {**header, "v": 1, "seq": 2000, "arrays": [{"name": "action", "dtype": "float32", "shape": [5_000_000]}]}
    assert peer.error_for([msgspec.msgpack.encode(big), b"\0" * 20_000_000]) == p.TOO_LARGE
    not_utf8 = msgspec.msgpack.encode({**header, "v": 1}).replace(b"command", b"comm\xffnd")  # same length
    assert peer.error_for([not_utf8]) == p.MALFORMED  # a string that is not UTF-8 (it would reach the log)
    assert peer.error_for([msgspec.msgpack.encode({**header, "v": 1, "body": {7: "x"}})]) == p.MALFORMED  # int key
    assert peer.error_for([*good(), *[b"\0"] * 20]) == p.MALFORMED  # frames beyond any valid message's count
    empty_but_vast = {**header, "v": 1, "seq": 2001, "arrays": [{"name": "action", "dtype": "float32",
                                                                  "shape": [0, 2**62, 2**62]}]}
    assert peer.error_for([msgspec.msgpack.encode(empty_but_vast), b""]) == p.BAD_SHAPE  # numpy cannot index it
    assert peer.error_for([msgspec.msgpack.encode({**header, "v": 1, "seq": -1})]) == p.MALFORMED  # seq below 0
    assert peer.error_for(peer.message(p.ARM, {"clear_fault": "yes"})) == p.MALFORMED  # a body field of the wrong type
    assert peer.error_for(peer.message(p.HELLO, {"agent": 7})) == p.MALFORMED  # and the session is not replaced
    peer.send(good(seq=5000))
    assert peer.error_for(good(seq=4000)) == p.OLD_SEQ  # a sequence number from the past
    # beyond libzmq's own limit the connection is dropped before we see a byte; the server stays up
    huge = RawPeer(srv.endpoint)
    huge.send([b"\0" * (p.MAX_MESSAGE_BYTES + 1)])
    status_peer = RawPeer(srv.endpoint)
    status_peer.send(status_peer.message(p.STATUS))
    status = status_peer.reply(lambda m: m.type == p.STATUS).body
    assert status["drops"][p.MALFORMED] >= 9 and status["drops"][p.NOT_FINITE] == 2 and status["drops"][p.OLD_SEQ] == 1

    # still serving: a real agent connects and drives it
    env = RemoteRobotEnv(BridgeConfig(connect=srv.endpoint))
    env.reset()
    _, _, _, _, info = env.step(np.array([0.2, 0.2], np.float32))
    assert info["command_applied"]
    env.close()
    assert srv.proc.poll() is None


# ---- limits, faults, modes -----------------------------------------------------------------------

def test_an_action_outside_the_limits_is_clipped_and_reported_as_applied(robot):
    srv = robot(max_delta=0.5)
    env = RemoteRobotEnv(BridgeConfig(connect=srv.endpoint, normalize_actions=False))
    env.reset()
    reported = {}
    for _ in range(3):
        _, _, _, _, info = env.step(np.array([3.0, -7.0], np.float32))
        assert info["command_applied"]
        reported[info["tick"]] = info["action_applied"]
    env.close()
    ticks = [e for e in srv.events("applied") if e["command_seq"] is not None]
    # the first tick that obeys a command moves 0.5 at most from rest; after that, the limits hold
    assert np.allclose(ticks[0]["action"], [0.5, -0.5]) and all(np.allclose(e["action"], [1.0, -1.0]) for e in ticks[1:])
    assert set(reported) <= {e["tick"] for e in ticks}  # every step the agent took is one the server logged
    for e in ticks:  # what the agent was told it applied is what the server applied at that tick
        if e["tick"] in reported:
            assert np.allclose(reported[e["tick"]], e["action"])


def test_the_absolute_limits_hold_even_when_the_last_applied_action_lies_outside_them():
    from robot_bridge.safety import limit_action

    low, high = np.array([-1.0, -1.0], np.float32), np.array([1.0, 1.0], np.float32)
    last = np.array([1.5, 0.0], np.float32)  # a position arm moved by hand beyond its limit
    out = limit_action(np.array([3.0, 0.8], np.float32), low, high, last, max_delta=0.05)
    assert np.allclose(out, [1.0, 0.05])
    unknown = np.array([np.nan, np.nan], np.float32)  # after a driver failure: only the limits apply
    assert np.allclose(limit_action(np.array([3.0, 0.8], np.float32), low, high, unknown, 0.05), [1.0, 0.8])


def test_faults_latch_until_an_explicit_rearm_and_a_disarmed_robot_only_observes(robot):
    srv = robot()
    client = RobotClient(BridgeConfig(connect=srv.endpoint))
    client.connect()
    assert client.mode == "disarmed"  # the server starts read-only
    seq = client.send(p.COMMAND, {}, {"action": np.zeros(2, np.float32)})
    err = client.wait_for(lambda m: m.type == p.ERROR and m.body["ref_seq"] == seq, 1.0)
    assert err.body["code"] == p.DISARMED
    assert client.wait_for(lambda m: m.type == p.OBS, 1.0) is not None  # observations flow all the same
    client.request(p.ARM)
    client.request(p.ESTOP, {"reason": "test"})
    fault = client.wait_for(lambda m: m.type == p.OBS and m.body["mode"] == "faulted", 1.0)
    assert "e-stop" in fault.body["fault"]
    assert "e-stop" in client.fault  # the one fault message, kept though the wait above dropped it
    with pytest.raises(RobotFault, match="clear_fault"):
        client.request(p.ARM)  # arming does not clear a latched fault ...
    client.request(p.DISARM)
    with pytest.raises(RobotFault, match="clear_fault"):
        client.request(p.ARM)  # ... nor does a disarm in between ...
    client.request(p.ARM, {"clear_fault": True})  # ... only an explicit re-arm does
    assert client.mode == "armed" and client.fault is None
    # a command sent before a disarm is never applied after the next arm
    client.send(p.COMMAND, {}, {"action": np.full(2, 0.9, np.float32)})
    client.request(p.DISARM)
    client.request(p.ARM)
    armed_at = client.status()["tick"]
    for _ in range(3):
        obs = client.wait_for(lambda m: m.type == p.OBS and m.body["tick"] > armed_at, 1.0)
        assert np.allclose(obs.arrays["applied"], 0.0) and obs.body["command_seq"] is None  # the hold: no torque
    # a new session finds the robot disarmed: it arms before it drives, as the first did
    other = RobotClient(BridgeConfig(connect=srv.endpoint))
    other.connect()
    assert other.mode == "disarmed"
    seq = other.send(p.COMMAND, {}, {"action": np.zeros(2, np.float32)})
    assert other.wait_for(lambda m: m.type == p.ERROR and m.body["ref_seq"] == seq, 1.0).body["code"] == p.DISARMED
    other.request(p.ARM)
    other.request(p.BYE)
    assert client.status()["mode"] == "disarmed"  # and an agent that leaves leaves it disarmed
    other.close()
    client.close()


def test_commands_faster_than_the_rate_limit_are_dropped(robot):
    srv = robot(max_command_hz=2)  # a burst of 4, then 2 a second: 30 at once leave >= 20 dropped on any machine
    client = RobotClient(BridgeConfig(connect=srv.endpoint))
    client.connect()
    client.request(p.ARM)
    for _ in range(30):
        client.send(p.COMMAND, {}, {"action": np.zeros(2, np.float32)})
    time.sleep(0.2)
    status = client.status()
    assert status["drops"].get(p.RATE_LIMITED, 0) >= 20, status
    client.close()


def test_the_client_reconnects_after_the_server_restarts(robot):
    srv = robot()
    env = RemoteRobotEnv(BridgeConfig(connect=srv.endpoint, step_timeout_s=0.5, reconnect_tries=20))
    env.reset()
    env.step(np.zeros(2, np.float32))
    srv.stop()
    again = robot(bind=srv.endpoint)
    for _ in range(3):
        _, _, _, _, info = env.step(np.array([0.1, 0.1], np.float32))
        if info["command_applied"]:
            break
    assert env.client.reconnects >= 1 and info["command_applied"] and info["mode"] == "armed"
    assert again.events("hello")
    env.close()


# ---- security ------------------------------------------------------------------------------------

def test_a_client_with_an_unknown_key_is_refused(robot, tmp_path):
    from agent.cli import main

    assert main(["keys", "generate", str(tmp_path / "keys")]) == 0
    assert main(["keys", "generate", str(tmp_path / "stranger")]) == 0
    srv = robot("--keys", str(tmp_path / "keys"))
    keys, stranger = tmp_path / "keys", tmp_path / "stranger"
    assert (keys / "server.key_secret").stat().st_mode & 0o077 == 0 and (keys / "client.key_secret").stat().st_mode & 0o077 == 0
    bad = BridgeConfig(connect=srv.endpoint, server_key=str(keys / "server.key"),
                       client_key=str(stranger / "client.key_secret"), connect_timeout_s=1.0)
    with pytest.raises(ConnectionError, match="authorized_clients"):
        RemoteRobotEnv(bad)
    good = RobotClient(BridgeConfig(connect=srv.endpoint, server_key=str(keys / "server.key"),
                                    client_key=str(keys / "client.key_secret")))
    good.connect()
    assert good.status()["counts"].get("auth_refused", 0) >= 1
    good.close()
    # no key at all is refused too: the handshake never completes
    with pytest.raises(ConnectionError):
        RobotClient(BridgeConfig(connect=srv.endpoint, connect_timeout_s=0.5)).connect()


@pytest.mark.parametrize("program", ["python", "cpp"])
def test_binding_beyond_loopback_without_keys_is_refused_unless_insecure(program, tmp_path, request):
    start = ([sys.executable, "-m", "agent.cli", "robot-server", "--driver", "sim"] if program == "python"
             else [str(request.getfixturevalue("cpp_server")), "--driver", "memory"])
    cmd = [*start, "--bind", "tcp://0.0.0.0:0", "--log", str(tmp_path / "log.jsonl")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--insecure" in done.stderr and "tcp://0.0.0.0:0" in done.stderr


def test_protocol_never_unpickles_and_round_trips_arrays():
    msg = p.Message(p.OBS, 7, {"tick": 3}, {"image": np.arange(12, dtype=np.uint8).reshape(2, 2, 3),
                                            "proprio": np.array([1.5, -2.0], np.float32)}, "abc")
    back = p.decode([bytes(f) for f in p.encode(msg)])
    assert back.type == p.OBS and back.seq == 7 and back.session == "abc" and back.body == {"tick": 3}
    assert np.array_equal(back.arrays["image"], msg.arrays["image"]) and back.arrays["proprio"].dtype == np.float32
    import pickle

    import msgspec

    with pytest.raises(p.ProtocolError) as exc:
        p.decode([pickle.dumps({"v": 1, "type": "obs"})])
    assert exc.value.code == p.MALFORMED
    # msgpack's extension types (where a pickle could hide) are refused, not decoded
    sneaky = {"v": 1, "type": "obs", "seq": 1, "t_ns": 0, "session": "", "arrays": [],
              "body": {"x": msgspec.msgpack.Ext(1, pickle.dumps(object()))}}
    with pytest.raises(p.ProtocolError, match="extension"):
        p.decode([msgspec.msgpack.encode(sneaky)])

    header = {"v": 1, "type": "obs", "seq": 1, "t_ns": 0, "session": "", "body": {},
              "arrays": [{"name": "x", "dtype": "object", "shape": [1]}]}
    with pytest.raises(p.ProtocolError, match="dtype"):  # object arrays (pickles in disguise) are not on the wire
        p.decode([msgspec.msgpack.encode(header), b"\0" * 8])


def test_the_log_writes_json_with_null_for_non_finite_values_and_every_array_survives_the_wire(tmp_path):
    from robot_bridge.event_log import EventLog

    log = EventLog(tmp_path / "log.jsonl")
    log.command(3, np.array([0.5, np.nan], np.float32), t=12.5)
    log.command(4, np.array([np.inf]), refused=p.NOT_FINITE)
    log.applied(9, 3, "armed", "run", np.array([0.25, -1.0], np.float32))
    log.event("fault", {"reason": "x", "tick": np.int64(9), "where": np.array([1.0, np.nan])})
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows[0] == {"t": 12.5, "event": "command", "seq": 3, "refused": None, "action": [0.5, None]}
    assert rows[1]["action"] == [None] and rows[1]["refused"] == p.NOT_FINITE
    assert rows[2]["action"] == [0.25, -1.0] and rows[2]["command_seq"] == 3
    assert rows[3]["tick"] == 9 and rows[3]["where"] == [1.0, None]

    # empty and big-endian arrays go on the wire too (as little-endian)
    msg = p.Message(p.OBS, 1, {}, {"none": np.zeros((0, 3), np.float32), "be": np.arange(3, dtype=">f8")})
    back = p.decode([bytes(f) for f in p.encode(msg)])
    assert back.arrays["none"].shape == (0, 3) and back.arrays["be"].tolist() == [0.0, 1.0, 2.0]


# ---- sensors -------------------------------------------------------------------------------------

def test_the_camera_reads_frames_from_a_video_file(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 50.0, (96, 72))
    for i in range(10):
        frame = np.zeros((72, 96, 3), np.uint8)
        frame[:, :, 2] = 25 * i  # red rises frame by frame (BGR on disk)
        writer.write(frame)
    writer.release()
    camera = Camera(str(path), size=32)
    camera.connect()
    try:
        first = camera.read()["image"]
        seen = {int(first[..., 0].mean())}
        deadline = time.monotonic() + 5
        while len(seen) < 3 and time.monotonic() < deadline:  # it plays on, at the file's 50 fps
            seen.add(int(camera.read()["image"][..., 0].mean()))
            time.sleep(0.005)
    finally:
        camera.disconnect()
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    assert len(seen) >= 3 and first[..., 2].mean() < 10, seen  # RGB: the red rose in the file's third channel
    with pytest.raises(DriverError, match="cannot open"):
        Camera(str(tmp_path / "missing.avi")).connect()


def test_a_missing_sound_device_is_a_clear_error_at_start(tmp_path):
    with pytest.raises(DriverError, match="microphone"):
        Microphone(device="no such microphone").connect()
    cmd = [sys.executable, "-m", "agent.cli", "robot-server", "--driver", "sim", "--bind", "tcp://127.0.0.1:0",
           "--log", str(tmp_path / "log.jsonl"), "microphone.device=no such microphone", "microphone.key=mic"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "microphone" in done.stderr and "Traceback" not in done.stderr


USER_DRIVER = '''
import numpy as np
from robot_bridge.driver import Driver, DriverError
from robot_bridge.spec import Feature, RobotSpec

class Slider(Driver):
    """One velocity-controlled joint on a rail; driving it past its end stop is a hardware fault."""
    def __init__(self, travel=0.3):
        self.travel, self.position = travel, 0.0
        self._spec = RobotSpec("slider", 50.0, {"proprio": Feature((1,), "float32")}, [-1.0], [1.0])
    @property
    def spec(self):
        return self._spec
    def connect(self):
        self.position = 0.0
    def disconnect(self):
        self.position = 0.0
    def get_observation(self):
        return {"proprio": np.array([self.position], np.float32)}
    def send_action(self, action):
        self.position += float(action[0]) * self._spec.period
        if abs(self.position) > self.travel:
            raise DriverError(f"end stop hit at {self.position:.3f} m")
        return action
    def hold(self):
        return self.send_action(np.zeros(1, np.float32))
'''


def test_a_users_driver_composes_with_a_camera_and_its_failure_latches_a_fault(server, tmp_path, monkeypatch):
    (tmp_path / "slider_robot.py").write_text(USER_DRIVER)
    video = tmp_path / "wrist.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    for i in range(5):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    srv = server("--driver", "slider_robot:Slider", "driver_options.travel=0.2", f"camera.source={video}",
                 "camera.size=16", "camera.key=wrist")
    env = RemoteRobotEnv(BridgeConfig(connect=srv.endpoint))
    obs, _ = env.reset()
    assert obs["wrist"].shape == (16, 16, 3) and obs["proprio"].shape == (1,)
    with pytest.raises(RobotFault, match="end stop"):
        for _ in range(50):  # 1 m/s for 0.2 m of travel: the fault comes after ~10 ticks
            env.step(np.ones(1, np.float32))
    status = env.client.status()
    assert status["mode"] == "faulted" and "end stop" in status["fault"]
    env.close()


def test_after_a_watchdog_disarm_the_agent_re_arms_and_a_stale_observation_is_held_on(robot):
    srv = robot(safe_after_s=0.3)
    env = RemoteRobotEnv(BridgeConfig(connect=srv.endpoint))
    env.reset()
    _, _, _, _, info = env.step(np.array([0.3, 0.3], np.float32))
    assert info["command_applied"] and not info["stale"]
    time.sleep(0.6)  # the agent is away (learning, saving): the robot holds, then goes safe and disarms
    assert time.monotonic() > info["stale_at"]  # what the loop checks before it plans: too old now
    obs, info = env.reset(options={"hold": True})  # the loop's answer: hold, and take a fresh observation
    assert info["command_applied"] and info["mode"] == "armed" and not info["stale"]
    assert np.allclose(info["action_applied"], 0.0)  # the arm's hold
    _, _, _, _, info = env.step(np.array([0.3, 0.3], np.float32))
    assert info["command_applied"] and np.allclose(info["action_applied"], 0.3)
    env.close()
    events = [e["event"] for e in srv.events() if e["event"] in ("arm", "disarm")]
    assert events[:3] == ["arm", "disarm", "arm"], events  # re-armed once, by the agent


def test_a_microphones_rate_reaches_the_spec_and_the_episode_files():
    from types import SimpleNamespace

    from agent.loop import audio_sample_rate
    from robot_bridge.driver import WithSensors
    from robot_bridge.drivers.sim import SimDriver

    spec = WithSensors(SimDriver(pixels=False), [Microphone(sample_rate=44_100, samples=2205, key="mic")]).spec
    assert spec.extra["sample_rates"] == {"audio": 16_000, "mic": 44_100}
    robot = SimpleNamespace(unwrapped=SimpleNamespace(spec_=SimpleNamespace(extra={"sample_rates": {"audio": 44_100}})))
    assert audio_sample_rate(robot) == 44_100  # what the recorder writes into each /audio message
    assert audio_sample_rate(SimpleNamespace(unwrapped=object())) == 16_000  # the simulation's own
