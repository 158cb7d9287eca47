"""The agent side of the bridge: a remote robot that looks to the loop like any other body.

`RobotClient` speaks the protocol over one DEALER socket: hello, commands, control messages, and the
stream of observations. `RemoteRobotEnv` wraps it as a Gymnasium env with the robot's observation
dict, so `agent/loop.py` drives a robot exactly as it drives a simulation. It adds what a network
needs: the age of every observation (stale ones are flagged), the action really applied (from the
robot), arming, and a reconnect when the link drops.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from typing import Any

import gymnasium
import numpy as np
import zmq
from gymnasium import spaces

from robot_bridge import protocol as p
from robot_bridge.config import BridgeConfig
from robot_bridge.keys import load_pair, load_public
from robot_bridge.spec import RobotSpec

CLOCK_SAMPLES = 16  # heartbeat round trips kept; the shortest gives the clock offset


class RobotFault(RuntimeError):
    """The robot refuses to be driven: it is faulted (e-stop, driver error) or disarmed."""


class RobotClient:
    def __init__(self, cfg: BridgeConfig, agent_name: str = "omniloop") -> None:
        cfg.validate()
        self.cfg, self.agent_name = cfg, agent_name
        self.ctx = zmq.Context.instance()
        self.socket: zmq.Socket | None = None
        self._receive_timeout_ms = -1
        self.seq = 0
        self.session = ""
        self.spec: RobotSpec | None = None
        self.limits: dict[str, Any] = {}
        self.mode = "?"
        self.fault: str | None = None  # the reason of the last fault the robot reported, in any message
        self.clock_offset_ns = 0  # the robot's clock minus ours
        self.clock_samples: deque[tuple[int, int]] = deque(maxlen=CLOCK_SAMPLES)  # (round trip, offset) ns
        self.last_sync = 0.0
        self.reconnects = 0
        self.bad_messages = 0  # messages from the robot that broke the protocol, skipped

    # ---- the link ---------------------------------------------------------------------------

    def connect(self) -> RobotSpec:
        self._open()
        seq = self.send(p.HELLO, {"agent": self.agent_name, "id": uuid.uuid4().hex})
        reply = self.wait_for(lambda m: m.type == p.WELCOME or m.type == p.ERROR and m.body.get("ref_seq") == seq,
                              self.cfg.connect_timeout_s)
        if reply is None:
            self._close_socket()
            curve = (" and that its authorized_clients folder holds this agent's public key"
                     if self.cfg.server_key else "")
            raise ConnectionError(f"no answer from {self.cfg.connect} within {self.cfg.connect_timeout_s} s: "
                                  f"check that `omniloop robot-server` runs there{curve}")
        if reply.type == p.ERROR:
            self._close_socket()
            raise ConnectionError(f"{self.cfg.connect} refused hello: {reply.body.get('code')}: {reply.body.get('detail')}")
        self.spec = RobotSpec.from_wire(reply.body.get("spec"))
        self.session, self.mode = str(reply.body.get("session", reply.session)), reply.body.get("mode", "?")
        self.fault = reply.body.get("fault") if self.mode == "faulted" else None
        self.limits = dict(reply.body.get("limits") or {})
        self.clock_samples.clear()
        for _ in range(8):  # a first estimate of the clock offset before the first observation
            self.heartbeat()
            self.wait_for(lambda m: m.type == p.HEARTBEAT, 0.5)
        return self.spec

    def reconnect(self) -> RobotSpec:
        """A fresh socket and session, retried with growing waits; the robot's spec must not change."""
        old = self.spec
        self._close_socket()
        wait = 0.1
        for attempt in range(1, self.cfg.reconnect_tries + 1):
            try:
                spec = self.connect()
            except ConnectionError:
                if attempt == self.cfg.reconnect_tries:
                    raise
                time.sleep(wait)
                wait = min(wait * 2, 2.0)
                continue
            if old is not None and spec.to_wire() != old.to_wire():
                raise ConnectionError(f"{self.cfg.connect} came back as a different robot ({spec.name}); not driving it")
            self.reconnects += 1
            return spec
        raise ConnectionError(f"{self.cfg.connect}: no reconnect in {self.cfg.reconnect_tries} tries")

    def close(self, say_bye: bool = True) -> None:
        if self.socket is None:
            return
        if say_bye and self.session:
            seq = self.send(p.BYE)
            self.wait_for(lambda m: m.type == p.ACK and m.body.get("ref_seq") == seq, 0.2)
        self._close_socket()

    def _open(self) -> None:
        self._close_socket()
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 64)
        sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_BYTES)
        if self.cfg.server_key:
            public, secret = load_pair(self.cfg.client_key)
            sock.curve_serverkey = load_public(self.cfg.server_key)
            sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.connect(self.cfg.connect)
        self.socket = sock
        self._receive_timeout_ms = -1  # the socket's RCVTIMEO: -1 blocks
        self.session = ""

    def _close_socket(self) -> None:
        if self.socket is not None:
            self.socket.close(0)
            self.socket = None

    # ---- messages ---------------------------------------------------------------------------

    def send(self, kind: str, body: dict | None = None, arrays: dict[str, np.ndarray] | None = None) -> int:
        self.seq += 1
        p.send(self.socket, p.encode(p.Message(kind, self.seq, body or {}, arrays or {}, self.session)))
        return self.seq

    def receive(self, timeout_s: float) -> p.Message | None:
        """The next good message within `timeout_s`, or None. Messages that break the protocol are
        counted and skipped; heartbeat replies refine the clock offset on the way."""
        if self.socket is None:
            return None
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left > 0:
                # a blocking receive with a timeout: one call into libzmq, where poll-then-receive is two
                timeout_ms = max(1, int(left * 1000))
            elif p.waiting(self.socket):
                timeout_ms = 0
            else:
                return None  # asking costs less than a receive that raises zmq.Again
            if timeout_ms != self._receive_timeout_ms:
                self.socket.setsockopt(zmq.RCVTIMEO, timeout_ms)
                self._receive_timeout_ms = timeout_ms
            try:
                frames = p.receive(self.socket)
            except zmq.Again:
                return None
            try:
                msg = p.decode(frames)
            except p.ProtocolError:
                self.bad_messages += 1
                continue
            if msg.type == p.HEARTBEAT:
                self._clock_sample(msg)
            elif msg.type == p.FAULT:  # sent once: remembered here, whoever was waiting for something else
                self.fault = str(msg.body.get("reason"))
            return msg

    def wait_for(self, wanted, timeout_s: float) -> p.Message | None:
        """The first message within `timeout_s` for which `wanted(message)` is true; others are dropped."""
        deadline = time.monotonic() + timeout_s
        while (msg := self.receive(max(0.0, deadline - time.monotonic()))) is not None:
            if wanted(msg):
                return msg
        return None

    def request(self, kind: str, body: dict | None = None, timeout_s: float = 1.0) -> p.Message:
        """Send a control message and wait for its ack; raises RobotFault on an error reply."""
        seq = self.send(kind, body)
        reply = self.wait_for(lambda m: m.type in (p.ACK, p.ERROR) and m.body.get("ref_seq") == seq, timeout_s)
        if reply is None:
            raise ConnectionError(f"{self.cfg.connect}: no answer to {kind} within {timeout_s} s{self._fault_note()}")
        if reply.type == p.ERROR:
            raise RobotFault(f"the robot refused {kind}: {reply.body.get('code')}: {reply.body.get('detail')}")
        self.mode = reply.body.get("mode", self.mode)
        if kind == p.ARM:
            self.fault = None  # armed again: a fault reported before is cleared
        return reply

    def _fault_note(self) -> str:
        return f"; the robot reported a fault: {self.fault}" if self.fault else ""

    def status(self, timeout_s: float = 1.0) -> dict:
        self.send(p.STATUS)
        reply = self.wait_for(lambda m: m.type == p.STATUS, timeout_s)
        if reply is None:
            raise ConnectionError(f"{self.cfg.connect}: no status within {timeout_s} s")
        return reply.body

    # ---- the robot's clock ------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Ask for a heartbeat; its reply, whenever it is read, refines the clock offset."""
        self.send(p.HEARTBEAT)
        self.last_sync = time.monotonic()

    def _clock_sample(self, reply: p.Message) -> None:
        sent = reply.body.get("echo_t_ns")
        if not isinstance(sent, int):
            return
        now = time.time_ns()
        # NTP's estimate: the robot stamped its reply halfway through the round trip, give or take
        # half of it; the shortest recent round trip is the least skewed, and drift is followed
        self.clock_samples.append((now - sent, reply.t_ns - (sent + now) // 2))
        self.clock_offset_ns = min(self.clock_samples)[1]

    def age_s(self, obs: p.Message) -> float:
        """Seconds since the robot captured `obs`, on our clock."""
        return (time.time_ns() + self.clock_offset_ns - int(obs.body.get("t_capture_ns", obs.t_ns))) / 1e9


class RemoteRobotEnv(gymnasium.Env):
    """A robot behind `omniloop robot-server`, as a Gymnasium env.

    Observation: the robot's features (the spec in its welcome), e.g. image, proprio, audio.
    Action: [-1, 1] per dimension, mapped onto the robot's limits (or the limits themselves without
    normalize_actions); the server clips and limits it again.
    Reward: 0.0 (a robot has none); the agent's objective sets it (`agent/objectives.py`).
    info: stale (bool, at arrival), stale_at (time.monotonic() after which the observation is stale),
    obs_age_s, tick, action_sent, action_applied, command_applied (bool), reconnected (bool), mode,
    and the running counts dropped_commands and bad_observations.
    Episodes are `episode_steps` long and end truncated; a robot that can reset its scene (the `sim`
    driver) starts a new one at every reset(). The robot is armed before the first command and after
    a watchdog disarm (with `arm`), never over a latched fault unless `clear_fault` is given.
    """

    metadata = {"render_modes": []}

    def __init__(self, cfg: BridgeConfig, agent_name: str = "omniloop", clear_fault: bool = False) -> None:
        self.cfg, self.clear_fault = cfg, clear_fault
        self.client = RobotClient(cfg, agent_name)
        self.spec_ = self.client.connect()
        self.observation_space = spaces.Dict({k: box_of(f) for k, f in self.spec_.observation.items()})
        low, high = self.spec_.action_low, self.spec_.action_high
        self._action_shape = low.shape
        # [-1, 1] <-> [low, high]; a dimension whose limits coincide maps to its one value
        self._middle = ((low + high) / 2).astype(np.float32)
        self._half_span = np.where(high > low, (high - low) / 2, 1.0).astype(np.float32)
        # a robot whose limits are [-1, 1] already: no arithmetic on the way out or back (it is per step)
        self._maps = cfg.normalize_actions and not (np.all(self._middle == 0) and np.all(self._half_span == 1))
        if cfg.normalize_actions:
            self.action_space = spaces.Box(-1.0, 1.0, low.shape, np.float32)
        else:
            self.action_space = spaces.Box(low, high, dtype=np.float32)
        self.max_age_s = cfg.max_obs_age_s or 2.0 * self.spec_.period
        self._newest: p.Message | None = None
        self._t = 0
        self._reconnected = False
        self._disarmed = False
        self.dropped_commands = 0  # commands the robot refused (rate limit, shape, NaN, old session)
        self.bad_observations = 0  # observations that did not match the spec, skipped

    @property
    def control_period(self) -> float:
        return self.spec_.period

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """A new episode (and a new scene, where the robot can reset one). With options={"hold": True}
        the episode goes on: the robot is told to hold, and the first fresh observation comes back.
        The loop does that instead of planning on a stale observation."""
        super().reset(seed=seed)
        if options and options.get("hold"):
            return self._send_and_observe({"hold": True}, None)
        if self.spec_.can_reset:
            try:
                self.client.request(p.RESET)
            except ConnectionError:
                self._reconnect()
                self.client.request(p.RESET)
        self._t = 0
        obs_msg = self._next_observation(after_tick=self._newest_tick())
        return self._observation(obs_msg), self._info(obs_msg, None, False)

    def step(self, action: np.ndarray):
        action = np.asarray(action, np.float32).reshape(self.action_space.shape)
        obs, info = self._send_and_observe({}, action)
        self._t += 1
        return obs, 0.0, False, self._t >= self.cfg.episode_steps, info

    def close(self) -> None:
        self.client.close()

    # ---- internals --------------------------------------------------------------------------

    def _send_and_observe(self, body: dict, action: np.ndarray | None):
        """Send one command (an action, or a hold), then return the observation that shows it applied.
        A robot that the watchdog disarmed while we were away (learning, saving) is re-armed, once."""
        self._ready_to_command()
        arrays = {} if action is None else {"action": self._to_robot(action)}
        for attempt in range(2):
            after = self._newest_tick()
            seq = self.client.send(p.COMMAND, {"obs_tick": after, **body}, arrays)
            if time.monotonic() - self.client.last_sync > self.cfg.clock_sync_s:
                self.client.heartbeat()  # its reply is read with the observations
            self._disarmed = False
            obs_msg = self._next_observation(after_tick=after, command_seq=seq)
            if not self._disarmed or attempt:
                break
            self._arm()
        return self._observation(obs_msg), self._info(obs_msg, action, obs_msg.body.get("command_seq") == seq)

    def _ready_to_command(self) -> None:
        """Arm the robot if it is disarmed (at the start, or after the watchdog's safe state) and we may."""
        mode = self._newest.body.get("mode") if self._newest is not None else self.client.mode
        if mode == "armed" or not self.cfg.arm:
            return
        if mode == "faulted" and not self.clear_fault:
            fault = self._newest.body.get("fault") if self._newest is not None else "?"
            raise RobotFault(f"the robot is faulted ({fault}); re-arm it with --clear-fault")
        self._arm()

    def _arm(self) -> None:
        self.client.request(p.ARM, {"clear_fault": self.clear_fault})
        self.clear_fault = False  # one explicit re-arm, not a standing permission
        self._newest = self._next_observation(after_tick=self._newest_tick())  # one that shows it armed

    def _newest_tick(self) -> int:
        return int(self._newest.body.get("tick", -1)) if self._newest is not None else -1

    def _next_observation(self, after_tick: int, command_seq: int | None = None) -> p.Message:
        """The first observation after `after_tick` that shows `command_seq` applied (any one after
        `after_tick` if None), waiting up to step_timeout_s. If the command is not applied by then,
        the newest observation there is (`_info` says so, and flags it stale if it is old). If no
        observation came at all, the link is down: reconnect, and take the first one."""
        deadline = time.monotonic() + self.cfg.step_timeout_s
        best: p.Message | None = None
        reconnected = self._reconnected
        while (msg := self.client.receive(max(0.0, deadline - time.monotonic()))) is not None:
            if self._refused(msg, command_seq):
                command_seq = None  # it will never be applied: the next observation will do
            if self._reconnected and not reconnected:  # a new session counts its ticks from the start
                reconnected, after_tick, deadline = True, -1, time.monotonic() + self.cfg.step_timeout_s
            if msg.type != p.OBS or int(msg.body.get("tick", -1)) <= after_tick or not self._valid(msg):
                continue
            best = self._newest = msg
            if command_seq is None or msg.body.get("command_seq") == command_seq:
                # plan on the newest observation queued. One captured less than a control period ago
                # is the newest there is, and asking the socket (a system call) is skipped
                if self.client.age_s(msg) > self.spec_.period:
                    while (more := self.client.receive(0.0)) is not None:
                        self._refused(more, None)
                        if more.type == p.OBS and self._valid(more):
                            best = self._newest = more
                return best
        if best is not None:
            return best
        self._reconnect()
        deadline = time.monotonic() + self.cfg.step_timeout_s
        while (msg := self.client.receive(max(0.0, deadline - time.monotonic()))) is not None:
            if msg.type == p.OBS and self._valid(msg):
                self._newest = msg
                return msg
        raise ConnectionError(f"{self.cfg.connect}: connected, but no observation within {self.cfg.step_timeout_s} s"
                              f"{self.client._fault_note()}")

    def _reconnect(self) -> None:
        self.client.reconnect()
        self._newest, self._reconnected = None, True  # the next command re-arms, if we may

    def _valid(self, msg: p.Message) -> bool:
        """An observation with every feature of the spec, of the right shape, and the applied action;
        a broken one is counted and skipped, never planned on."""
        try:
            for name, feature in self.spec_.observation.items():
                feature.check(name, msg.arrays[name])
            if msg.arrays["applied"].shape != self._action_shape:
                raise ValueError("applied action of the wrong shape")
        except (KeyError, ValueError):
            self.bad_observations += 1
            return False
        return True

    def _refused(self, msg: p.Message, command_seq: int | None) -> bool:
        """Raise if the robot faulted, refuses to be driven, or went to another agent; True if it
        dropped our command (rate limit, shape, a restart that forgot our session)."""
        if msg.type == p.FAULT:
            raise RobotFault(f"the robot faulted: {msg.body.get('reason')}; re-arm it with --clear-fault")
        if msg.type != p.ERROR or command_seq is None or msg.body.get("ref_seq") != command_seq:
            return False
        code = msg.body.get("code")
        if code == p.DISARMED and self.cfg.arm:
            self._disarmed = True  # the watchdog disarmed it while we were away: `_send_and_observe` re-arms
        elif code in (p.DISARMED, p.FAULTED):
            raise RobotFault(f"the robot refused the command: {code}: {msg.body.get('detail')}")
        if code == p.REPLACED:
            raise ConnectionError(f"{self.cfg.connect}: another agent took over the robot")
        if code == p.NO_SESSION:  # the server restarted and no longer knows us
            self._reconnect()
        self.dropped_commands += 1
        return True

    def _to_robot(self, action: np.ndarray) -> np.ndarray:
        """An action in the agent's units -> the robot's (the identity without normalize_actions)."""
        return action * self._half_span + self._middle if self._maps else action

    def agent_action(self, robot_action: np.ndarray) -> np.ndarray:
        """An action in the robot's own units (a joint target in radians, say) -> the agent's units,
        which `step` takes; a new array (the identity without normalize_actions)."""
        robot_action = np.asarray(robot_action, np.float32)
        return (robot_action - self._middle) / self._half_span if self._maps else robot_action.copy()

    def _from_robot(self, action: np.ndarray) -> np.ndarray:
        """A robot's action (a read-only view of a frame) -> the agent's units, as a new array."""
        return self.agent_action(action)

    def _observation(self, msg: p.Message) -> dict[str, np.ndarray]:
        return {k: np.array(msg.arrays[k]) for k in self.spec_.observation}

    def _info(self, msg: p.Message, sent: np.ndarray | None, applied: bool) -> dict[str, Any]:
        age = self.client.age_s(msg)
        reconnected, self._reconnected = self._reconnected, False
        return {"stale": age > self.max_age_s, "stale_at": time.monotonic() + self.max_age_s - age,
                "obs_age_s": age, "tick": int(msg.body.get("tick", -1)), "action_sent": sent,
                "action_applied": self._from_robot(msg.arrays["applied"].astype(np.float32, copy=False)),
                "command_applied": applied, "reconnected": reconnected, "mode": msg.body.get("mode"),
                "dropped_commands": self.dropped_commands, "bad_observations": self.bad_observations}


def box_of(feature) -> spaces.Box:
    dtype = np.dtype(feature.dtype)
    if dtype == np.uint8:
        return spaces.Box(0, 255, feature.shape, np.uint8)
    low = -np.inf if feature.low is None else feature.low
    high = np.inf if feature.high is None else feature.high
    return spaces.Box(low, high, feature.shape, dtype)
