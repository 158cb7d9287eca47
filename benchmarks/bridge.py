"""What the robot bridge costs, against a raw pyzmq ping-pong of the same bytes, in one run.

    python benchmarks/bridge.py                      # about 5 minutes on 2 cores
    python benchmarks/bridge.py --seconds 5 --out runs/bench/bridge

The robot side runs in its own process, as it would on a robot, with a driver whose sensors and
actuators are memory, so that only the bridge is measured (protocol checks, safety, the control
clock, the client's Gymnasium step): `omniloop robot-server`'s `RobotServer` in Python, and the C++
server of robot_bridge/cpp (built here with make if it is not). The agent side is
`RemoteRobotEnv.step`, the call the loop makes. Two payloads: state only (8 proprio floats), and
state with a 64x64x3 image.

1. Round trip, observation plus command: the server runs in lockstep (it ticks as soon as a command
   arrives); one step = command out, the robot applies it, reads, and sends the observation that
   shows it applied. The baseline is a ROUTER/DEALER ping-pong of the same bytes with no protocol at
   all, through pyzmq's `send_multipart`/`recv_multipart`: the command message out, the observation
   message back. The targets are ratios to it. Beside it:
   - "lean raw": the same ping-pong through the socket calls the bridge itself makes
     (`protocol.send`/`receive`, a few microseconds cheaper);
   - "codec only": lean raw plus the protocol's encoding and decoding on both sides, the floor under
     any bridge that speaks this protocol from Python on both sides, before a single check;
   - "agent alone": `RemoteRobotEnv.step` against a Python robot side that only decodes and answers
     (`serve_null`), the agent side's own share over the codec.
   All six are measured in turns (`--rounds` slices each, in a rotating order), so that a slow spell
   of the machine weighs on all of them alike; with each, the CPU time that each side's process spent
   per round trip (its Python or C++, libzmq's threads and the kernel's work for it).
2. Sustained control rate, with each server: it runs its fixed-rate clock at a target rate and the
   agent steps as fast as it can; a rate is sustained when at least 99 % of the steps see their
   command applied at the next tick and the achieved rate is within 2 % of the target. The highest
   sustained target of a ladder is reported, and the lockstep rate (the ceiling).
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import re
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from robot_bridge import protocol as p
from robot_bridge.driver import Driver
from robot_bridge.spec import Feature, RobotSpec

CPP_SERVER = Path(__file__).resolve().parents[1] / "robot_bridge" / "cpp" / "build" / "omniloop-robot-server"
STATE_LADDER = (250, 500, 1000, 2000, 4000)
IMAGE_LADDER = (50, 100, 200, 500, 1000, 2000)
# In lockstep a command starts the tick, whatever the clock. Between its slices of the round-trip
# measurement the server's own clock still ticks, and at 100 Hz it would wake a core 2000 times a second
# (the naps of a tick's last 2 ms), which shifts the other ping-pongs' round trips on a 2-core VM. At
# 1 Hz it is as quiet as they are.
LOCKSTEP_CLOCK_HZ = 1.0


class MemoryDriver(Driver):
    """A robot whose joints and camera are memory: what it applies it reports, what it sees is a
    fixed frame that changes one byte per tick. It measures the bridge, not a device: it hands out its
    own buffers rather than copies, which the server may take, as it sends (and so copies) an
    observation before the driver is called again."""

    def __init__(self, control_hz: float, image: bool) -> None:
        features = {"proprio": Feature((8,), "float32")}
        if image:
            features["image"] = Feature((64, 64, 3), "uint8", 0.0, 255.0)
        self._spec = RobotSpec("memory", control_hz, features, -np.ones(2, np.float32), np.ones(2, np.float32))
        self.proprio = np.zeros(8, np.float32)
        self.image = np.zeros((64, 64, 3), np.uint8) if image else None
        self.ticks = 0

    @property
    def spec(self) -> RobotSpec:
        return self._spec

    def connect(self) -> None:
        self.ticks = 0

    def disconnect(self) -> None:
        self.ticks = -1

    def get_observation(self) -> dict[str, np.ndarray]:
        obs = {"proprio": self.proprio}
        if self.image is not None:
            self.image[0, 0, 0] = self.ticks % 256
            obs["image"] = self.image
        return obs

    def send_action(self, action: np.ndarray) -> np.ndarray:
        self.ticks += 1
        self.proprio[:2] = action
        return action

    def hold(self) -> np.ndarray:
        return self.send_action(np.zeros(2, np.float32))


def serve_bridge(endpoint: mp.Queue, control_hz: float, image: bool, lockstep: bool, log: str) -> None:
    from robot_bridge.safety import SafetyConfig
    from robot_bridge.server import RobotServer, ServerConfig

    # as `omniloop robot-server` runs: every command and applied action logged
    safety = SafetyConfig(start_armed=True, max_command_hz=1e6, safe_after_s=60.0)
    server = RobotServer(MemoryDriver(control_hz, image), ServerConfig(bind="tcp://127.0.0.1:0", lockstep=lockstep,
                                                                       log=log, safety=safety))
    endpoint.put(server.endpoint)
    server.serve()  # until the parent terminates this process


def serve_raw(endpoint: mp.Queue, image: bool, mode: str) -> None:
    """The baseline robot: it answers each message with an observation's bytes, through pyzmq's
    multipart calls (`pyzmq`) or the bridge's own socket calls (`lean`). With `codec`, it also decodes
    the command and encodes a fresh observation, as the bridge does, and nothing else."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind("tcp://127.0.0.1:0")
    endpoint.put(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    reply, _ = observation_frames(image)
    arrays = observation_arrays(image)
    while True:
        if mode == "pyzmq":
            peer, *_ = sock.recv_multipart()
            sock.send_multipart([peer, *reply])
        else:
            peer, *frames = p.receive(sock)
            if mode == "codec":
                command = p.decode(frames)
                body = observation_body(command.seq, command.seq)
                reply = p.encode(p.Message(p.OBS, command.seq, body, arrays, command.session))
            p.send(sock, [peer, *reply])


def serve_null(endpoint: mp.Queue, image: bool) -> None:
    """The robot side at its floor, for the agent side's own cost: it decodes each message and answers
    what `RemoteRobotEnv` sends as the protocol says (welcome, heartbeat, an observation for each command
    showing it applied, an ack for the rest), and does nothing else: no checks, no clock, no safety, no
    log. Against it, what `RemoteRobotEnv.step` takes over the codec-only ping-pong is the agent side's
    share of the bridge."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind("tcp://127.0.0.1:0")
    endpoint.put(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    spec, arrays, session = MemoryDriver(1.0, image).spec.to_wire(), observation_arrays(image), "0" * 32
    seq = tick = 0
    while True:
        peer, *frames = p.receive(sock)
        try:
            msg = p.decode(frames)
        except p.ProtocolError:
            continue  # the benchmark's agent sends none; a stray peer's bytes are not this floor's to judge
        seq += 1
        if msg.type == p.HELLO:
            body = {"session": session, "spec": spec, "mode": "armed", "fault": None, "limits": {},
                    "echo_t_ns": msg.t_ns}
            replies = [p.Message(p.WELCOME, seq, body, session=session)]
        elif msg.type == p.HEARTBEAT:
            replies = [p.Message(p.HEARTBEAT, seq, {"echo_t_ns": msg.t_ns, "echo_seq": msg.seq}, session=session)]
            if tick == 0:  # before the first command, an observation too, as a robot's clock would have sent one
                seq += 1
                replies.append(p.Message(p.OBS, seq, observation_body(tick + 1, None), arrays, session))
        elif msg.type == p.COMMAND:
            tick = max(tick, 1) + 1
            arrays["applied"] = msg.arrays.get("action", np.zeros(2, np.float32))  # a hold applies zero
            replies = [p.Message(p.OBS, seq, observation_body(tick, msg.seq), arrays, session)]
        else:
            replies = [p.Message(p.ACK, seq, {"ref_seq": msg.seq, "type": msg.type, "mode": "armed"}, session=session)]
        for reply in replies:
            p.send(sock, [peer, *p.encode(reply)])


def observation_arrays(image: bool) -> dict[str, np.ndarray]:
    arrays = {"proprio": np.zeros(8, np.float32), "applied": np.zeros(2, np.float32)}
    if image:
        arrays["image"] = np.zeros((64, 64, 3), np.uint8)
    return arrays


def observation_body(tick: int, command_seq: int | None) -> dict:
    return {"tick": tick, "t_capture_ns": time.time_ns(), "command_seq": command_seq, "mode": "armed", "fault": None,
            "watchdog": "run"}


def observation_frames(image: bool) -> tuple[list[bytes], list[bytes]]:
    """The bytes of one bridge observation and one command, as the bridge sends them."""
    arrays = observation_arrays(image)
    obs = [bytes(f) for f in p.encode(p.Message(p.OBS, 1, observation_body(1, 1), arrays, "0" * 32))]
    cmd = [bytes(f) for f in p.encode(p.Message(p.COMMAND, 1, {"obs_tick": 1}, {"action": np.zeros(2, np.float32)}, "0" * 32))]
    return obs, cmd


def start(target, *args) -> tuple[mp.Process, str]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(queue, *args), daemon=True)
    proc.start()
    return proc, queue.get(timeout=30)


class RawPeer:
    """The baseline's agent side: bytes out, bytes back, through pyzmq's multipart calls (`pyzmq`, the
    raw round trip of the targets) or the bridge's socket calls (`lean`); with `codec`, both sides
    also encode and decode the protocol's messages (the floor under any bridge that speaks it from
    Python)."""

    def __init__(self, image: bool, mode: str) -> None:
        import zmq

        self.mode = mode
        _, self.frames = observation_frames(image)
        self.proc, endpoint = start(serve_raw, image, mode)
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.command = p.Message(p.COMMAND, 0, {"obs_tick": 0}, {"action": np.zeros(2, np.float32)}, "0" * 32)

    def round_trips(self, seconds: float) -> list[float]:
        out = []
        end = time.perf_counter() + seconds
        while (t0 := time.perf_counter()) < end:
            if self.mode == "pyzmq":
                self.sock.send_multipart(self.frames)
                self.sock.recv_multipart()
            elif self.mode == "lean":
                p.send(self.sock, self.frames)
                p.receive(self.sock)
            else:
                self.command.seq += 1
                p.send(self.sock, p.encode(self.command))
                p.decode(p.receive(self.sock))
            out.append(time.perf_counter() - t0)
        return out

    def close(self) -> None:
        self.sock.close()
        self.proc.terminate()


def start_cpp(control_hz: float, image: bool, lockstep: bool, log: str) -> tuple[subprocess.Popen, str]:
    """The C++ robot server (robot_bridge/cpp) with its memory driver, as `serve_bridge` runs the Python one:
    armed, every command and applied action logged, no rate limit."""
    cmd = [str(CPP_SERVER), "--driver", "memory", "--hz", str(control_hz), "--bind", "tcp://127.0.0.1:0", "--log", log,
           "--start-armed", "--max-command-hz", "1e6", "--safe-after-s", "60", *(["--image"] if image else []),
           *(["--lockstep"] if lockstep else [])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    found = re.search(r" at (tcp://\S+?): ", proc.stdout.readline())
    if not found:
        proc.kill()
        raise RuntimeError(f"the C++ robot server did not start: {proc.stderr.read()}")
    return proc, found.group(1)


def build_cpp_server() -> None:
    """Build the C++ robot server (make rebuilds it only when a source changed)."""
    done = subprocess.run(["make", "-s", "-C", str(CPP_SERVER.parents[1])], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"building the C++ robot server failed (`make setup` installs what it needs):\n{done.stderr}")


class BridgePeer:
    """The bridge's agent side, `RemoteRobotEnv`, against a robot side in its own process: the Python
    `RobotServer` (`robot="python"`), the C++ server (`"cpp"`), or the floor robot of `serve_null` (`"null"`)."""

    def __init__(self, image: bool, control_hz: float, lockstep: bool, log: Path, robot: str = "python") -> None:
        from robot_bridge.client import RemoteRobotEnv
        from robot_bridge.config import BridgeConfig

        if robot == "null":
            self.proc, endpoint = start(serve_null, image)
        elif robot == "cpp":
            self.proc, endpoint = start_cpp(control_hz, image, lockstep, str(log))
        else:
            self.proc, endpoint = start(serve_bridge, control_hz, image, lockstep, str(log))
        self.env = RemoteRobotEnv(BridgeConfig(connect=endpoint, arm=False, max_obs_age_s=1.0))
        self.env.reset()
        self.action = np.zeros(2, np.float32)

    def round_trips(self, seconds: float) -> list[float]:
        return self.steps(seconds)[0]

    def steps(self, seconds: float) -> tuple[list[float], float, float]:
        """(step times, achieved steps/s, share of steps whose command was applied at the next tick)."""
        times, on_time = [], 0
        start_t = time.perf_counter()
        end = start_t + seconds
        while (t0 := time.perf_counter()) < end:
            before = self.env._newest_tick()
            _, _, _, _, info = self.env.step(self.action)
            times.append(time.perf_counter() - t0)
            on_time += info["command_applied"] and info["tick"] == before + 1
        return times, len(times) / (time.perf_counter() - start_t), on_time / max(len(times), 1)

    def close(self) -> None:
        self.env.close()
        self.proc.terminate()


def agent_cpu_s() -> float:
    """CPU seconds this process has used, every thread (libzmq's included), user and kernel."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def robot_cpu_s(pid: int) -> float | None:
    """CPU seconds the robot side's process has used, from /proc (None where there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@dataclass
class Trips:
    """One ping-pong's round trips, and the CPU time each side spent on them."""

    seconds: list[float] = field(default_factory=list)
    agent_cpu_s: float = 0.0
    robot_cpu_s: float | None = 0.0

    def cpu_us(self) -> tuple[float, float | None]:
        """Mean CPU µs per round trip: (agent side, robot side)."""
        n = max(len(self.seconds), 1)
        return 1e6 * self.agent_cpu_s / n, None if self.robot_cpu_s is None else 1e6 * self.robot_cpu_s / n


def measure(peer: RawPeer | BridgePeer, seconds: float, trips: Trips) -> None:
    """One slice of `peer`'s round trips, added to `trips` with both sides' CPU time."""
    agent, robot = agent_cpu_s(), robot_cpu_s(peer.proc.pid)
    trips.seconds.extend(peer.round_trips(seconds))
    robot_after = robot_cpu_s(peer.proc.pid)
    trips.agent_cpu_s += agent_cpu_s() - agent
    if trips.robot_cpu_s is not None and robot is not None and robot_after is not None:
        trips.robot_cpu_s += robot_after - robot
    else:
        trips.robot_cpu_s = None


def round_trips(image: bool, seconds: float, rounds: int, log: Path) -> dict[str, Trips]:
    """Round trips of the raw ping-pongs, the codec-only ping-pong, the agent side alone and the bridge
    with either server in lockstep, measured in alternation (`rounds` slices each, in a rotating order),
    so that a slow spell of the machine weighs on all of them alike."""
    peers = {"raw": RawPeer(image, "pyzmq"), "lean": RawPeer(image, "lean"), "codec": RawPeer(image, "codec"),
             "agent_alone": BridgePeer(image, LOCKSTEP_CLOCK_HZ, lockstep=True, log=log, robot="null"),
             "bridge": BridgePeer(image, LOCKSTEP_CLOCK_HZ, lockstep=True, log=log),
             "cpp": BridgePeer(image, LOCKSTEP_CLOCK_HZ, lockstep=True, log=log, robot="cpp")}
    trips = {name: Trips() for name in peers}
    try:
        for peer in peers.values():  # warm-up
            peer.round_trips(0.2)
        names = list(peers)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                measure(peers[name], seconds / rounds, trips[name])
    finally:
        for peer in peers.values():
            peer.close()
    return trips


def sustained_rate(image: bool, seconds: float, control_hz: float, log: Path, robot: str) -> tuple[float, float]:
    """The server on its fixed clock at `control_hz`, the agent stepping as fast as it can:
    (achieved steps/s, share of steps whose command was applied at the next tick)."""
    peer = BridgePeer(image, control_hz, lockstep=False, log=log, robot=robot)
    try:
        peer.steps(0.1)  # warm-up
        _, rate, share = peer.steps(seconds)
    finally:
        peer.close()
    return rate, share


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=8, help="alternating slices of the round-trip measurements")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/bridge"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console(width=170)
    build_cpp_server()
    rows, samples = [], {}
    log = args.out / "server.jsonl"  # only its cost matters here: removed at the end
    for image in (False, True):
        name = "state + 64x64 image" if image else "state"
        with console.status(f"{name}: raw ping-pongs, codec only, agent alone and both servers, in turns"):
            trips = round_trips(image, 3 * args.seconds, args.rounds, log)
        row = {"payload": name}
        times = {k: np.asarray(t.seconds) for k, t in trips.items()}
        raw = times["raw"]
        row.update({"raw_p50_us": 1e6 * np.median(raw), "raw_p99_us": 1e6 * np.percentile(raw, 99),
                    "raw_p999_us": 1e6 * np.percentile(raw, 99.9), "raw_max_us": 1e6 * raw.max()})
        for k in ("lean", "codec", "agent_alone", "bridge", "cpp"):
            row[f"{k}_p50_us"] = 1e6 * np.median(times[k])
            row[f"{k}_p50_ratio"] = row[f"{k}_p50_us"] / row["raw_p50_us"]
        for k in SERVERS:
            # the tail past p99: the Python server's log writes of 64 KiB (about one tick in 250) land here
            row.update({f"{k}_p99_us": 1e6 * np.percentile(times[k], 99),
                        f"{k}_p999_us": 1e6 * np.percentile(times[k], 99.9), f"{k}_max_us": 1e6 * times[k].max(),
                        f"{k}_lockstep_hz": len(times[k]) / float(np.sum(times[k]))})
            row[f"{k}_p99_ratio"] = row[f"{k}_p99_us"] / row["raw_p99_us"]
            row[f"{k}_p999_ratio"] = row[f"{k}_p999_us"] / row["raw_p999_us"]
            row[f"{k}_sustained_hz"] = 0
            for hz in IMAGE_LADDER if image else STATE_LADDER:
                with console.status(f"{name}, {SERVERS[k]}: fixed clock at {hz} Hz"):
                    rate, share = sustained_rate(image, args.seconds, float(hz), log, "python" if k == "bridge" else k)
                console.print(f"{name}, {SERVERS[k]}: target {hz} Hz -> {rate:.0f} steps/s, "
                              f"{share:.1%} applied at the next tick")
                if share >= 0.99 and rate >= 0.98 * hz:
                    row[f"{k}_sustained_hz"] = hz
        for k, t in trips.items():
            row[f"{k}_agent_cpu_us"], row[f"{k}_robot_cpu_us"] = t.cpu_us()
        samples[name] = (raw, times["bridge"], times["cpp"])
        rows.append(row)

    console.print(median_table(rows))
    console.print(tail_table(rows))
    console.print(cpu_table(rows))
    with open(args.out / "bridge.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    log.unlink(missing_ok=True)
    plot(samples, args.out / "bridge.png")
    console.print(f"results: {args.out / 'bridge.csv'}, {args.out / 'bridge.png'}")
    return 0


SERVERS = {"bridge": "Python server", "cpp": "C++ server"}
PING_PONGS = {"raw": "raw", "lean": "lean raw", "codec": "codec only", "agent_alone": "agent alone",
              "bridge": "bridge, Python server", "cpp": "bridge, C++ server"}


def median_table(rows: list[dict]) -> Table:
    """Median round trips, and each one's ratio to the raw pyzmq ping-pong's."""
    table = Table(title="round trip p50, µs (ratio to raw): the bridge against a raw pyzmq ping-pong of the same "
                        "bytes")
    table.add_column("payload")
    for label in PING_PONGS.values():
        table.add_column(label, justify="right")
    for r in rows:
        cells = [f"{r['raw_p50_us']:.0f}"]
        cells += [f"{r[f'{k}_p50_us']:.0f} ({r[f'{k}_p50_ratio']:.2f}x)" for k in list(PING_PONGS)[1:]]
        table.add_row(r["payload"], *cells)
    return table


def tail_table(rows: list[dict]) -> Table:
    """The tail of the round trips, and the control rates, with either server."""
    table = Table(title="tail and control rate, by robot-side server")
    table.add_column("payload")
    table.add_column("raw p99 µs", justify="right")
    for label in SERVERS.values():
        for col in ("p99 µs", "p99.9 ratio", "lockstep steps/s", "sustained Hz"):
            table.add_column(f"{label}: {col}", justify="right")
    for r in rows:
        cells = [f"{r['raw_p99_us']:.0f}"]
        for k in SERVERS:
            cells += [f"{r[f'{k}_p99_us']:.0f} ({r[f'{k}_p99_ratio']:.2f}x)", f"{r[f'{k}_p999_ratio']:.2f}x",
                      f"{r[f'{k}_lockstep_hz']:.0f}", f"{r[f'{k}_sustained_hz']}"]
        table.add_row(r["payload"], *cells)
    return table


def cpu_table(rows: list[dict]) -> Table:
    """CPU time per round trip on each side of the wire, for every ping-pong of the round-trip run."""
    table = Table(title="CPU time per round trip, µs, each side's whole process (Python, libzmq's threads, kernel)")
    table.add_column("payload")
    for label in PING_PONGS.values():
        table.add_column(f"{label}: agent", justify="right")
        table.add_column(f"{label}: robot", justify="right")
    for r in rows:
        cells = []
        for k in PING_PONGS:
            cells += [f"{r[f'{k}_{side}_cpu_us']:.0f}" if r[f"{k}_{side}_cpu_us"] is not None else "-"
                      for side in ("agent", "robot")]
        table.add_row(r["payload"], *cells)
    return table


def plot(samples: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samples), figsize=(5 * len(samples), 3.6))
    for ax, (name, (raw, bridge, cpp)) in zip(np.atleast_1d(axes), samples.items()):
        for label, data in (("raw pyzmq ping-pong", raw), ("bridge step, Python server", bridge),
                            ("bridge step, C++ server", cpp)):
            xs = np.sort(data) * 1e6
            ax.plot(xs, np.arange(1, xs.size + 1) / xs.size, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("round trip, µs")
        ax.set_ylabel("share of round trips")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
