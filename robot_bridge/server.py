"""The robot-side server: it owns the driver, the control clock and safety, and serves one agent.

One thread does everything, so the driver is never called concurrently. Each control period:

    1. drain the socket: hello, commands, arm/disarm/e-stop, status, ... (every message is checked;
       a bad one gets an error reply or a counted drop, and the server goes on)
    2. choose the action: the newest valid command if armed; the previous one while the watchdog
       allows; the driver's hold after `hold_after_periods` without a command; its safe state and a
       disarm after `safe_after_s`; hold while disarmed or faulted
    3. limit it (absolute limits, then max change per step) and apply it through the driver
    4. read the observation and send it, with the action really applied and the command it came from

With `lockstep`, a tick also starts as soon as a new command arrives (never later than one period):
the robot then runs as fast as the agent answers, which is how the benchmark finds the highest rate.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from robot_bridge import protocol as p
from robot_bridge.driver import Driver
from robot_bridge.event_log import EventLog
from robot_bridge.keys import authorized_dir, load_pair, server_secret_file
from robot_bridge.safety import RateLimiter, SafetyConfig, Watchdog, limit_action

log = logging.getLogger("omniloop.robot_server")

SEND_HWM = 64  # messages queued for a slow agent; beyond, new ones are dropped and counted
DRAIN_MAX = 64  # messages answered between two ticks at most: a flood cannot stop the clock
REPORT_EVERY_S = 10.0  # a status line on the console this often
# the stream of commands and applied actions reaches the disk at least this often (and whenever the
# log's 64 KiB buffer fills): a flush every 100 ticks put its tens of microseconds into 1 % of the
# round trips, the 99th percentile itself
LOG_FLUSH_S = 0.5
FINE_WAIT_S = 100e-6  # the nap between socket checks in a tick's last 2 ms
RTT_WINDOW = 4096  # the latest observation-to-command round trips kept for `status`
# Optional body fields that must have their type when present (a command's are checked with its action).
# An e-stop is honoured whatever its body holds.
BODY_TYPES: dict[str, dict[str, type]] = {p.HELLO: {"agent": str, "id": str}, p.ARM: {"clear_fault": bool}}


class BindRefused(ValueError):
    """Binding a non-loopback address without CURVE keys, and without --insecure."""


@dataclass
class CameraConfig:
    source: int | str = 0  # a device index, a video file or a stream URL
    size: int = 64  # the square image's side, after a centre crop
    key: str = "image"


@dataclass
class MicrophoneConfig:
    device: int | str | None = None  # a sounddevice index or name; None: the default input
    sample_rate: int = 16_000
    samples: int = 800  # per observation: one 0.05 s control period at 16 kHz
    key: str = "audio"


@dataclass
class ServerConfig:
    """What `omniloop robot-server` runs: the driver, its sensors, the socket and safety."""

    driver: str = "sim"  # a name (sim) or a user's driver as module:Class
    driver_options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the driver
    camera: CameraConfig | None = None  # adds an OpenCV camera's frames to the observation
    microphone: MicrophoneConfig | None = None  # adds a sounddevice microphone's samples
    bind: str = "tcp://127.0.0.1:5555"
    keys: str | None = None  # folder from `omniloop keys generate`: server.key_secret, authorized_clients/
    insecure: bool = False  # allow a non-loopback bind without keys
    lockstep: bool = False
    log: str | None = None  # JSON-lines log of every command and applied action; None: no file
    safety: SafetyConfig = field(default_factory=SafetyConfig)


@dataclass
class Pending:
    seq: int
    action: np.ndarray | None  # None: an explicit hold


class RobotServer:
    def __init__(self, driver: Driver, cfg: ServerConfig) -> None:
        cfg.safety.validate()
        check_bind(cfg.bind, cfg.keys, cfg.insecure)
        self.driver, self.cfg = driver, cfg
        self.spec = driver.spec
        self._action_shape = (self.spec.action_dim,)
        period = self.spec.period
        self.watchdog = Watchdog(cfg.safety.hold_after_periods * period, cfg.safety.safe_after_s)
        self.rate = RateLimiter(cfg.safety.max_command_hz or 4.0 * self.spec.control_hz)
        self.mode = "armed" if cfg.safety.start_armed else "disarmed"
        self.fault: str | None = None
        self.safe = False  # the driver is in its safe state: it stays there until an arm
        self.session, self.peer, self.peer_seq = "", b"", -1
        self.replaced: deque[str] = deque(maxlen=8)  # sessions that a later hello replaced
        self.pending: Pending | None = None
        self.last_command: Pending | None = None  # the command in force, for the zero-order hold
        self.last_applied: np.ndarray | None = None
        self.watch_state = Watchdog.RUN
        self.tick = 0
        self.seq = 0
        self.counts: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.rtts_us: deque[float] = deque(maxlen=RTT_WINDOW)
        self.obs_sent_ns: dict[int, int] = {}  # tick -> when its observation left, for round trips
        self.stop_event = threading.Event()
        self.opened = False
        self._log: EventLog | None = None
        # commands received since the last tick, written after that tick's observation has left:
        # (receipt time, seq, action, refusal code)
        self._unlogged: list[tuple[float, int, np.ndarray | None, str | None]] = []
        self._auth: ThreadAuthenticator | None = None
        self.ctx = zmq.Context.instance()
        self._receive_timeout_ms = -1  # the socket's RCVTIMEO: -1 blocks
        self.socket = self._bind()
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    # ---- set-up -----------------------------------------------------------------------------

    def _bind(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full queue or a gone peer raises, so it is counted
        sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_BYTES)
        if self.cfg.keys:
            keys = Path(self.cfg.keys)
            public, secret = load_pair(server_secret_file(keys))
            self._auth = ThreadAuthenticator(self.ctx)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(authorized_dir(keys)))
            sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
        # refused handshakes are counted where there is a handshake to refuse: with CURVE keys
        self.monitor = (sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
                        if self.cfg.keys else None)
        sock.bind(self.cfg.bind)
        return sock

    def close(self) -> None:
        if self.monitor is not None:
            self.socket.disable_monitor()
            self.monitor.close(0)
        self.socket.close(0)
        if self._auth is not None:
            self._auth.stop()
        if self._log is not None:
            self._log.close()
            self._log = None

    # ---- the loop ---------------------------------------------------------------------------

    def open(self) -> None:
        """Connect the driver (a missing device fails here, before anything is served) and open the log."""
        if self.opened:
            return
        self.driver.connect()
        self.opened = True
        if self.mode == "armed":  # started armed: silence from now on counts towards hold and safe state
            self.watchdog.fed(time.monotonic())
        if self.cfg.log:
            self._log = EventLog(self.cfg.log)

    def serve(self, max_ticks: int | None = None) -> None:
        """Run until `stop_event` is set (or `max_ticks`); the driver is disconnected at the end."""
        self.open()
        self.record("start", robot=self.spec.name, bind=self.endpoint, mode=self.mode, control_hz=self.spec.control_hz,
                    curve=bool(self.cfg.keys))
        period = self.spec.period
        next_tick = time.monotonic()
        next_report = next_tick + REPORT_EVERY_S
        next_flush = next_tick + LOG_FLUSH_S
        try:
            while not self.stop_event.is_set() and (max_ticks is None or self.tick < max_ticks):
                early = self._wait_for_tick(next_tick)
                self._tick()
                now = time.monotonic()
                next_tick = now + period if early else next_tick + period
                if self._log is not None and now >= next_flush:
                    next_flush = now + LOG_FLUSH_S
                    self._log.flush()
                if now >= next_report:  # a running server says how it is doing
                    next_report += REPORT_EVERY_S
                    self._report()
                behind = time.monotonic() - next_tick
                if behind > period:  # the driver or the host fell behind: skip the ticks that are gone
                    self.counts["overruns"] += 1
                    next_tick = time.monotonic()
        finally:
            try:
                self.driver.safe_state()
            finally:
                self.driver.disconnect()
                self._write_log()  # commands that arrived after the last tick
                self.record("stop", ticks=self.tick)

    def _wait_for_tick(self, next_tick: float) -> bool:
        """Answer messages until the next tick is due; True if lockstep starts it early."""
        while (left := next_tick - time.monotonic()) > 0:
            if self.monitor is not None:
                self._auth_events()
            # a receive waits in whole milliseconds: the last one is spent in short naps between
            # checks, so that a command that arrives just before a tick still makes it at 1 kHz
            timeout_ms = int(left * 1000) if left > 0.002 else 0
            frames = self._receive(timeout_ms)
            if frames is None:
                if timeout_ms == 0:
                    time.sleep(min(FINE_WAIT_S, max(0.0, next_tick - time.monotonic())))
                continue
            self._handle(frames)
            if not self._lockstep_due():
                self._drain(next_tick)
            if self._lockstep_due():
                return True
        self._drain(next_tick)  # what arrived during the last nap
        return False

    def _receive(self, timeout_ms: int) -> list[bytes] | None:
        """The next message within `timeout_ms`, or None. One blocking call into libzmq with a timeout
        costs less than a poll followed by a receive, and the round trip waits on it."""
        if timeout_ms != self._receive_timeout_ms:
            self.socket.setsockopt(zmq.RCVTIMEO, timeout_ms)
            self._receive_timeout_ms = timeout_ms
        try:
            return p.receive(self.socket)
        except zmq.Again:
            return None

    def _lockstep_due(self) -> bool:
        """In lockstep, a fresh command starts the tick at once."""
        return self.cfg.lockstep and self.pending is not None and self.mode == "armed"

    def _drain(self, next_tick: float) -> None:
        """Answer waiting messages: at most DRAIN_MAX, and once the tick is due at least one."""
        for handled in range(DRAIN_MAX):
            if handled and time.monotonic() >= next_tick:
                return
            if not p.waiting(self.socket):
                return
            self._handle(p.receive(self.socket, p.NOBLOCK))

    def _tick(self) -> None:
        now = time.monotonic()
        self.tick += 1
        applied, command_seq = self._act(now)
        self.last_applied = applied
        applied_at = (time.time(), self.mode, self.watch_state)
        try:
            self._observe(applied, command_seq)
        finally:
            # the log is written once the observation has left: off the round trip
            self._write_log(applied_at, command_seq, applied)

    def _observe(self, applied: np.ndarray, command_seq: int | None) -> None:
        """Read the driver's observation, check it against the spec, and send it with the applied action."""
        try:
            obs = self.driver.get_observation()
            for name, feature in self.spec.observation.items():
                if name not in obs:
                    raise ValueError(f"observation {name!r} is missing")
                feature.check(name, np.asarray(obs[name]))
        except Exception as exc:  # a driver that cannot read must not take the server down
            self._set_fault(f"driver get_observation failed: {type(exc).__name__}: {exc}")
            return
        body = {"tick": self.tick, "t_capture_ns": time.time_ns(), "command_seq": command_seq,
                "mode": self.mode, "fault": self.fault, "watchdog": self.watch_state}
        arrays = {**{name: obs[name] for name in self.spec.observation}, "applied": applied}  # what the spec promises
        if self.peer:
            t_ns = time.time_ns()
            self._send(p.Message(p.OBS, self._next_seq(), body, arrays, self.session, t_ns))
            self.obs_sent_ns[self.tick] = time.perf_counter_ns()
            self.obs_sent_ns.pop(self.tick - 256, None)

    def _act(self, now: float) -> tuple[np.ndarray, int | None]:
        """Apply this tick's action through the driver; returns it and the seq of the command it obeys."""
        spec = self.spec
        try:
            if self.mode == "faulted" or self.safe:
                return self._applied(self.driver.safe_state()), None
            if self.mode != "armed":  # disarmed: observations flow, the robot holds
                return self._applied(self.driver.hold()), None
            state = self.watchdog.state(now)
            if state != self.watch_state:
                self.record("watchdog", state=state, silence_s=round(now - (self.watchdog.last_command or now), 4))
                log.info("watchdog: %s", state)
                self.watch_state = state
            if state == Watchdog.SAFE:
                self._disarm(f"no command for {self.cfg.safety.safe_after_s} s: safe state", safe=True)
                self.counts["safe_states"] += 1
                return self._applied(self.driver.safe_state()), None
            # a fresh command, else the one in force while the watchdog allows it, else hold
            command = self.pending or (self.last_command if state == Watchdog.RUN else None)
            self.pending = None
            if command is not None:
                self.last_command = command
            if command is None or command.action is None:
                self.counts["holds"] += 1
                return self._applied(self.driver.hold()), command.seq if command else None
            limited = limit_action(command.action, spec.action_low, spec.action_high, self.last_applied,
                                   self.cfg.safety.max_delta)
            return self._applied(self.driver.send_action(limited)), command.seq
        except Exception as exc:
            self._set_fault(f"driver failed to act: {type(exc).__name__}: {exc}")
            return np.full(spec.action_dim, np.nan, np.float32), None  # what the hardware did is unknown

    def _write_log(self, applied_at: tuple[float, str, str] | None = None, command_seq: int | None = None,
                   applied: np.ndarray | None = None) -> None:
        """The commands received since the last tick, then this tick's applied action, if given, with
        the time, mode and watchdog state at which it was applied."""
        if self._log is None:
            return
        for t, seq, action, refused in self._unlogged:
            self._log.command(seq, action, refused, t)
        self._unlogged.clear()
        if applied_at is not None:
            t, mode, watchdog = applied_at
            self._log.applied(self.tick, command_seq, mode, watchdog, applied, t)

    def _report(self) -> None:
        status = self.status()
        rtt = status["rtt_us"]
        log.info("tick %d, %s%s, watchdog %s, %d commands, %d holds, drops %s%s", self.tick, self.mode,
                 f" ({self.fault})" if self.fault else "", self.watch_state, self.counts["commands"],
                 self.counts["holds"], status["drops"] or "none",
                 f", round trip p50 {rtt['p50']:.0f} us" if rtt else "")

    def _applied(self, action) -> np.ndarray:
        applied = np.asarray(action, np.float32)
        if applied.shape != self._action_shape:
            raise ValueError(f"the driver reports an applied action of shape {list(applied.shape)}, "
                             f"its spec says {list(self._action_shape)}")
        if not np.all(np.isfinite(applied)):  # the next step's max_delta would have nothing to hold on to
            raise ValueError(f"the driver reports a non-finite applied action {applied.tolist()}")
        return applied

    def _disarm(self, reason: str, safe: bool = False) -> None:
        """Refuse commands from now on, and forget the ones in flight; `safe`: stay in the safe state."""
        if self.mode == "armed":
            self.mode = "disarmed"
        self.safe = self.safe or safe
        self.pending = self.last_command = None
        self.record("disarm", reason=reason, safe=self.safe)

    # ---- messages ---------------------------------------------------------------------------

    def _handle(self, frames: list[bytes]) -> None:
        peer, payload = frames[0], frames[1:]  # a ROUTER always gives the routing id and at least one frame
        try:
            msg = p.decode(payload)
            self._dispatch(peer, msg)
        except p.ProtocolError as exc:
            self.drops[exc.code] += 1
            self.record("error", code=exc.code, detail=exc.detail, ref_seq=exc.seq)
            self._reply(peer, p.error(exc.code, exc.detail, exc.seq, self._next_seq(), self.session))
        except Exception as exc:  # a bug or a driver failure while answering must not stop the robot's clock
            log.exception("while handling a message")
            self.drops[p.INTERNAL] += 1
            self.record("error", code=p.INTERNAL, detail=f"{type(exc).__name__}: {exc}")
            self._reply(peer, p.error(p.INTERNAL, f"{type(exc).__name__}: {exc}", None, self._next_seq(), self.session))

    def _dispatch(self, peer: bytes, msg: p.Message) -> None:
        kind = msg.type
        self.counts[f"rx_{kind}"] += 1
        for name, wanted in BODY_TYPES.get(kind, {}).items():
            value = msg.body.get(name)
            if value is not None and not isinstance(value, wanted):
                raise p.ProtocolError(p.MALFORMED, f"{kind} body: {name} must be {wanted.__name__}, "
                                                   f"got {type(value).__name__}", msg.seq)
        if kind == p.HELLO:
            return self._hello(peer, msg)
        if kind == p.STATUS:
            return self._reply(peer, p.Message(p.STATUS, self._next_seq(), self.status(), session=self.session))
        if kind == p.ESTOP:  # honoured from any authenticated peer, session or not
            self._set_fault(f"e-stop from {msg.body.get('reason') or 'an agent'}")
            return self._ack(peer, msg)
        if kind not in (p.COMMAND, p.HEARTBEAT, p.ARM, p.DISARM, p.RESET, p.BYE):
            raise p.ProtocolError(p.UNSUPPORTED, f"{kind!r} is a message the robot sends, not one it takes", msg.seq)
        if not self.session or msg.session != self.session or peer != self.peer:
            if msg.session and msg.session in self.replaced:
                raise p.ProtocolError(p.REPLACED, "a later hello replaced this session", msg.seq)
            raise p.ProtocolError(p.NO_SESSION, "no session with this peer: send hello first", msg.seq)
        if msg.seq <= self.peer_seq:
            raise p.ProtocolError(p.OLD_SEQ, f"seq {msg.seq} is not after {self.peer_seq}", msg.seq)
        self.peer_seq = msg.seq
        if kind == p.COMMAND:
            self._command(msg)
        elif kind == p.HEARTBEAT:
            self._reply(peer, p.Message(p.HEARTBEAT, self._next_seq(), {"echo_t_ns": msg.t_ns, "echo_seq": msg.seq},
                                        session=self.session))
        elif kind == p.ARM:
            self._arm(peer, msg)
        elif kind == p.DISARM:
            self._disarm("asked by the agent")  # a faulted robot stays faulted
            self._ack(peer, msg)
        elif kind == p.RESET:
            if not self.spec.can_reset:
                raise p.ProtocolError(p.UNSUPPORTED, f"robot {self.spec.name!r} cannot reset its scene", msg.seq)
            try:
                self.driver.reset()
            except Exception as exc:
                self._set_fault(f"driver reset failed: {type(exc).__name__}: {exc}")
                raise p.ProtocolError(p.FAULTED, self.fault, msg.seq) from None
            self.last_applied = None
            self.pending = self.last_command = None  # a command for the old scene means nothing in the new one
            self._ack(peer, msg)
        elif kind == p.BYE:
            self.record("bye", session=self.session)
            self._ack(peer, msg)
            self.session, self.peer = "", b""
            self.pending = self.last_command = None
            if self.mode == "armed" and not self.cfg.safety.start_armed:  # whoever drives next arms it first
                self._disarm("bye: the agent left")

    def _hello(self, peer: bytes, msg: p.Message) -> None:
        if self.session:
            self.record("session_replaced", old=self.session)
            self.replaced.append(self.session)
        self.session, self.peer, self.peer_seq = uuid.uuid4().hex, peer, msg.seq
        self.pending = self.last_command = None
        # a new session finds the robot as the server started it: unless it starts armed, it arms first
        if self.mode == "armed" and not self.cfg.safety.start_armed:
            self._disarm("a new session")
        agent = str(msg.body.get("agent", "?"))[:80]
        self.record("hello", session=self.session, agent=agent, agent_id=str(msg.body.get("id", ""))[:64])
        log.info("session %s for agent %s", self.session[:8], agent)
        limits = {"hold_after_s": self.watchdog.hold_after_s, "safe_after_s": self.watchdog.safe_after_s,
                  "max_delta": self.cfg.safety.max_delta, "max_command_hz": self.rate.hz,
                  "max_message_bytes": p.MAX_MESSAGE_BYTES, "max_array_bytes": p.MAX_ARRAY_BYTES}
        body = {"session": self.session, "spec": self.spec.to_wire(), "mode": self.mode, "fault": self.fault,
                "limits": limits, "echo_t_ns": msg.t_ns}
        self._reply(peer, p.Message(p.WELCOME, self._next_seq(), body, session=self.session))

    def _command(self, msg: p.Message) -> None:
        """Accept a command as the next tick's action, or refuse it; either way it is logged."""
        try:
            action = self._checked_action(msg)
        except p.ProtocolError as exc:
            if self._log is not None:
                raw = msg.arrays.get("action")
                self._unlogged.append((time.time(), msg.seq, None if raw is None else raw.ravel()[:16], exc.code))
            raise
        sent = self.obs_sent_ns.get(msg.body.get("obs_tick"))
        if sent is not None:
            self.rtts_us.append((time.perf_counter_ns() - sent) / 1000)
        self.pending = Pending(msg.seq, action)
        self.watchdog.fed(time.monotonic())
        self.counts["commands"] += 1
        if self._log is not None:
            self._unlogged.append((time.time(), msg.seq, action, None))

    def _checked_action(self, msg: p.Message) -> np.ndarray | None:
        """The command's action as float32 (None for a hold), after every check; the rate limit
        comes last, so a command refused for its content costs no rate budget."""
        if self.mode == "faulted":
            raise p.ProtocolError(p.FAULTED, f"fault latched ({self.fault}); send arm with clear_fault", msg.seq)
        if self.mode != "armed":
            raise p.ProtocolError(p.DISARMED, "the robot is disarmed: observations only; send arm", msg.seq)
        obs_tick, hold = msg.body.get("obs_tick"), msg.body.get("hold", False)
        if obs_tick is not None and (not isinstance(obs_tick, int) or isinstance(obs_tick, bool)) or not isinstance(hold, bool):
            raise p.ProtocolError(p.MALFORMED, "command body: obs_tick must be an int, hold a bool", msg.seq)
        action = None
        if not hold:
            action = msg.arrays.get("action")
            if action is None or action.shape != self._action_shape:
                shape = None if action is None else list(action.shape)
                raise p.ProtocolError(p.BAD_SHAPE, f"action must be float {list(self._action_shape)}, got {shape}", msg.seq)
            action = action.astype(np.float32, copy=False)
            # element by element in Python: for an action's few values, 4x faster than np.isfinite().all()
            if not all(map(math.isfinite, action.tolist())):
                raise p.ProtocolError(p.NOT_FINITE, f"action holds NaN or inf: {action.tolist()}", msg.seq)
        if not self.rate.allow(time.monotonic()):
            raise p.ProtocolError(p.RATE_LIMITED, f"more than {self.rate.hz:g} commands/s", msg.seq)
        return action

    def _arm(self, peer: bytes, msg: p.Message) -> None:
        if self.fault is not None and msg.body.get("clear_fault") is not True:
            raise p.ProtocolError(p.FAULTED, f"fault latched ({self.fault}); arm with clear_fault to re-arm", msg.seq)
        if self.fault:
            self.record("fault_cleared", fault=self.fault)
        self.mode, self.fault, self.safe = "armed", None, False
        self.pending = self.last_command = None  # nothing sent before the arm is applied after it
        self.watchdog.fed(time.monotonic())  # silence from now on counts towards hold and safe state
        self.watch_state = Watchdog.RUN
        self.record("arm", session=self.session)
        self._ack(peer, msg)

    def _set_fault(self, reason: str) -> None:
        if self.mode == "faulted":
            return  # latched already: the first cause is the one that counts, and a failing driver is one fault
        self.mode, self.fault = "faulted", reason
        self.pending = self.last_command = None
        self.counts["faults"] += 1
        self.record("fault", reason=reason)
        log.warning("fault: %s", reason)
        try:
            self.driver.safe_state()
        except Exception as exc:  # the fault is latched either way; say that safe state failed too
            self.record("fault", reason=f"safe_state failed: {type(exc).__name__}: {exc}")
        if self.peer:
            self._send(p.Message(p.FAULT, self._next_seq(), {"reason": reason}, session=self.session))

    def _auth_events(self) -> None:
        """Count and log the handshakes that CURVE refused since the last look."""
        while p.waiting(self.monitor):
            event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            self.counts["auth_refused"] += 1
            self.record("auth_refused", zmq_event=int(event["event"]),
                        endpoint=str(event.get("endpoint", b""), "utf-8", "replace"))

    # ---- replies, status, log ---------------------------------------------------------------

    def _ack(self, peer: bytes, msg: p.Message) -> None:
        self._reply(peer, p.Message(p.ACK, self._next_seq(), {"ref_seq": msg.seq, "type": msg.type, "mode": self.mode},
                                    session=self.session))

    def _reply(self, peer: bytes, msg: p.Message) -> None:
        try:
            p.send(self.socket, [peer, *p.encode(msg)], p.NOBLOCK)
        except zmq.Again:  # the agent reads slower than we send: this message is dropped
            self.drops["send_queue_full"] += 1
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.drops["peer_gone"] += 1  # the agent disconnected

    def _send(self, msg: p.Message) -> None:
        self._reply(self.peer, msg)

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def status(self) -> dict:
        rtts = np.asarray(self.rtts_us) if self.rtts_us else None
        return {"mode": self.mode, "fault": self.fault, "watchdog": self.watch_state, "tick": self.tick,
                "session": self.session, "counts": dict(self.counts), "drops": dict(self.drops),
                "rtt_us": None if rtts is None else {"p50": float(np.median(rtts)), "p99": float(np.percentile(rtts, 99)),
                                                     "n": int(rtts.size)}}

    def record(self, event: str, **fields) -> None:
        if self._log is not None:
            self._log.event(event, fields)


def check_bind(endpoint: str, keys: str | None, insecure: bool) -> None:
    """Refuse to serve a robot to the network in the clear unless the user asked for it by name."""
    if keys or insecure or is_loopback(endpoint):
        return
    raise BindRefused(f"refusing to bind {endpoint} without CURVE keys: anyone on the network could drive the robot. "
                      "Give --keys DIR (make them with `omniloop keys generate DIR`), bind tcp://127.0.0.1, "
                      "or pass --insecure if this network is yours alone")


def is_loopback(endpoint: str) -> bool:
    transport, _, address = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name: not provably local
        return False
