"""The agent side of the bridge: a remote robot that looks to the loop like any other body.

`RobotClient` speaks the protocol over one DEALER socket: hello, commands, control messages, and the
stream of observations. `RemoteRobotEnv` wraps it as a Gymnasium env with the robot's observation
dict, so `agent/loop.py` drives a robot exactly as it drives a simulation. It adds what a network
needs: the age of every observation (stale ones are flagged), the action really applied (from the
robot), and a reconnect when the link drops.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
import zmq
from gymnasium import spaces

from robot_bridge import protocol as p
from robot_bridge.keys import load_pair, load_public
from robot_bridge.spec import RobotSpec


class RobotFault(RuntimeError):
    """The robot refuses to be driven: it is faulted (e-stop, driver error) or disarmed."""


@dataclass
class BridgeConfig:
    connect: str = "tcp://127.0.0.1:5555"
    server_key: str | None = None  # the robot's public key file (server.key): turns CURVE on
    client_key: str | None = None  # this agent's secret key file (client.key_secret)
    max_obs_age_s: float = 0.0  # older observations are stale and not planned on; 0: 2 control periods
    step_timeout_s: float = 1.0  # wait this long for the observation that shows a command applied
    connect_timeout_s: float = 3.0
    reconnect_tries: int = 5  # after a dropped link, before giving up
    arm: bool = True  # arm the robot after connecting; false leaves it as it is (read-only if disarmed)
    clear_fault: bool = False  # arm even over a latched fault (an explicit re-arm)
    episode_steps: int = 200  # agent steps per episode: a robot has no episodes of its own
    normalize_actions: bool = True  # the agent acts in [-1, 1]; the bridge maps that onto the robot's limits
    think_fraction: float = 0.6  # the planner's deadline is at most this share of a control period

    def validate(self) -> None:
        for name in ("step_timeout_s", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"bridge.{name} must be > 0, got {getattr(self, name)}")
        if self.max_obs_age_s < 0:
            raise ValueError(f"bridge.max_obs_age_s must be >= 0, got {self.max_obs_age_s}")
        if not 0 < self.think_fraction <= 1:
            raise ValueError(f"bridge.think_fraction must be in (0, 1], got {self.think_fraction}")
        if self.episode_steps < 1:
            raise ValueError(f"bridge.episode_steps must be >= 1, got {self.episode_steps}")
        if (self.server_key is None) != (self.client_key is None):
            raise ValueError("bridge.server_key and bridge.client_key go together: CURVE needs both")


class RobotClient:
    def __init__(self, cfg: BridgeConfig, agent_name: str = "omniloop") -> None:
        cfg.validate()
        self.cfg, self.agent_name = cfg, agent_name
        self.ctx = zmq.Context.instance()
        self.socket: zmq.Socket | None = None
        self.seq = 0
        self.session = ""
        self.spec: RobotSpec | None = None
        self.limits: dict[str, Any] = {}
        self.mode = "?"
        self.clock_offset_ns = 0  # server clock minus ours, from hello
        self.errors: list[p.Message] = []  # error replies not yet looked at
        self.reconnects = 0

    # ---- the link ---------------------------------------------------------------------------

    def connect(self) -> RobotSpec:
        self._open()
        t0 = time.time_ns()
        self.send(p.HELLO, {"agent": self.agent_name, "id": uuid.uuid4().hex})
        reply = self._wait_for(lambda m: m.type in (p.WELCOME, p.ERROR), self.cfg.connect_timeout_s)
        if reply is None:
            self._close_socket()
            curve = (" and that its authorized_clients folder holds this agent's public key"
                     if self.cfg.server_key else "")
            raise ConnectionError(f"no answer from {self.cfg.connect} within {self.cfg.connect_timeout_s} s: "
                                  f"check that `omniloop robot-server` runs there{curve}")
        if reply.type == p.ERROR:
            self._close_socket()
            raise ConnectionError(f"{self.cfg.connect} refused hello: {reply.body.get('code')}: {reply.body.get('detail')}")
        t3 = time.time_ns()
        self.spec = RobotSpec.from_wire(reply.body.get("spec"))
        self.session, self.mode = reply.session, reply.body.get("mode", "?")
        self.limits = dict(reply.body.get("limits") or {})
        self.clock_offset_ns = reply.t_ns - (t0 + t3) // 2  # NTP's estimate, good to half the round trip
        self.sync_clock()
        return self.spec

    def sync_clock(self, samples: int = 8) -> None:
        """Refine the clock offset with heartbeats: the one with the shortest round trip is the
        least skewed by waiting (the robot answers between its control ticks)."""
        best_rtt = None
        for _ in range(samples):
            t0 = time.time_ns()
            seq = self.send(p.HEARTBEAT)
            reply = self._wait_for(lambda m: m.type == p.HEARTBEAT and m.body.get("echo_seq") == seq, 0.5)
            t3 = time.time_ns()
            if reply is not None and (best_rtt is None or t3 - t0 < best_rtt):
                best_rtt, self.clock_offset_ns = t3 - t0, reply.t_ns - (t0 + t3) // 2

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
        raise AssertionError("unreachable")

    def close(self, say_bye: bool = True) -> None:
        if self.socket is None:
            return
        if say_bye and self.session:
            self.send(p.BYE)
            self._wait_for(lambda m: m.type == p.ACK and m.body.get("type") == p.BYE, 0.2)
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
        self.session, self.errors = "", []

    def _close_socket(self) -> None:
        if self.socket is not None:
            self.socket.close(0)
            self.socket = None

    # ---- messages ---------------------------------------------------------------------------

    def send(self, kind: str, body: dict | None = None, arrays: dict[str, np.ndarray] | None = None) -> int:
        self.seq += 1
        msg = p.Message(kind, self.seq, body or {}, arrays or {}, self.session)
        p.send(self.socket, p.encode(msg))
        return self.seq

    def receive(self, timeout_s: float) -> p.Message | None:
        """The next message, or None after `timeout_s`. Bad messages from the robot are skipped."""
        if self.socket is None:
            return None
        waiting = self.socket.getsockopt(zmq.EVENTS) & zmq.POLLIN
        if not waiting and timeout_s <= 0:
            return None  # cheaper than a receive that raises zmq.Again
        # a blocking receive with a timeout: one call into libzmq, where poll-then-receive is two
        self.socket.setsockopt(zmq.RCVTIMEO, 0 if waiting else max(1, int(timeout_s * 1000)))
        try:
            msg = p.decode(self.socket.recv_multipart())
        except zmq.Again:
            return None
        except p.ProtocolError:
            return None
        if msg.type == p.ERROR:
            self.errors.append(msg)
        return msg

    def _wait_for(self, wanted, timeout_s: float) -> p.Message | None:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            msg = self.receive(left)
            if msg is not None and wanted(msg):
                return msg
        return None

    def request(self, kind: str, body: dict | None = None, timeout_s: float = 1.0) -> p.Message:
        """Send a control message and wait for its ack or error; raises RobotFault on an error."""
        seq = self.send(kind, body)
        reply = self._wait_for(lambda m: m.type in (p.ACK, p.ERROR) and m.body.get("ref_seq") == seq, timeout_s)
        if reply is None:
            raise ConnectionError(f"{self.cfg.connect}: no answer to {kind} within {timeout_s} s")
        if reply.type == p.ERROR:
            raise RobotFault(f"the robot refused {kind}: {reply.body.get('code')}: {reply.body.get('detail')}")
        self.mode = reply.body.get("mode", self.mode)
        return reply

    def status(self, timeout_s: float = 1.0) -> dict:
        self.send(p.STATUS)
        reply = self._wait_for(lambda m: m.type == p.STATUS, timeout_s)
        if reply is None:
            raise ConnectionError(f"{self.cfg.connect}: no status within {timeout_s} s")
        return reply.body

    def age_s(self, obs: p.Message) -> float:
        """Seconds since the robot captured `obs`, on our clock."""
        return (time.time_ns() + self.clock_offset_ns - int(obs.body.get("t_capture_ns", obs.t_ns))) / 1e9


class RemoteRobotEnv(gymnasium.Env):
    """A robot behind `omniloop robot-server`, as a Gymnasium env.

    Observation: the robot's features (the spec in its welcome), e.g. image, proprio, audio.
    Action: [-1, 1] per dimension, mapped onto the robot's limits (or the limits themselves without
    normalize_actions); the server clips and limits it again.
    Reward: 0.0 (a robot has none); the agent's objective sets it (`agent/objectives.py`).
    info: stale (bool), obs_age_s, tick, action_sent, action_applied, command_applied (bool),
    reconnected (bool), mode.
    Episodes are `episode_steps` long and end truncated; a robot that can reset its scene (the `sim`
    driver) starts a new one at every reset().
    """

    metadata = {"render_modes": []}

    def __init__(self, cfg: BridgeConfig, agent_name: str = "omniloop") -> None:
        self.cfg = cfg
        self.client = RobotClient(cfg, agent_name)
        self.spec_ = self.client.connect()
        self.observation_space = spaces.Dict({k: box_of(f) for k, f in self.spec_.observation.items()})
        low, high = self.spec_.action_low, self.spec_.action_high
        # [-1, 1] <-> [low, high]; a dimension whose limits coincide maps to its one value
        self._middle = ((low + high) / 2).astype(np.float32)
        self._half_span = np.where(high > low, (high - low) / 2, 1.0).astype(np.float32)
        if cfg.normalize_actions:
            self.action_space = spaces.Box(-1.0, 1.0, low.shape, np.float32)
        else:
            self.action_space = spaces.Box(low, high, dtype=np.float32)
        self.max_age_s = cfg.max_obs_age_s or 2.0 * self.spec_.period
        self._newest: p.Message | None = None
        self._t = 0
        self._reconnected = False
        self.dropped_commands = 0  # commands the robot refused (rate limit, shape, NaN, old session)
        self.bad_observations = 0  # observations that did not match the spec, skipped
        if cfg.arm:
            self.client.request(p.ARM, {"clear_fault": cfg.clear_fault})

    @property
    def control_period(self) -> float:
        return self.spec_.period

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """A new episode (and a new scene, where the robot can reset one). With options={"hold": True}
        the episode goes on: the robot is told to hold, and the first fresh observation comes back.
        The loop does that instead of planning on a stale observation."""
        super().reset(seed=seed)
        if options and options.get("hold"):
            after = self._newest_tick()
            seq = self._with_reconnect(lambda: self.client.send(p.COMMAND, {"obs_tick": after, "hold": True}))
            obs_msg = self._next_observation(after_tick=after, command_seq=seq)
            return self._observation(obs_msg), self._info(obs_msg, None, obs_msg.body.get("command_seq") == seq)
        if self.spec_.can_reset:
            self._with_reconnect(lambda: self.client.request(p.RESET))
        self._t = 0
        obs_msg = self._next_observation(after_tick=self._newest_tick())
        return self._observation(obs_msg), self._info(obs_msg, None, False)

    def step(self, action: np.ndarray):
        action = np.asarray(action, np.float32).reshape(self.action_space.shape)
        after = self._newest_tick()
        wire = self._to_robot(action)
        seq = self._with_reconnect(lambda: self.client.send(p.COMMAND, {"obs_tick": after}, {"action": wire}))
        obs_msg = self._next_observation(after_tick=after, command_seq=seq)
        self._t += 1
        applied = obs_msg.body.get("command_seq") == seq
        info = self._info(obs_msg, action, applied)
        return self._observation(obs_msg), 0.0, False, self._t >= self.cfg.episode_steps, info

    def close(self) -> None:
        self.client.close()

    # ---- internals --------------------------------------------------------------------------

    def _newest_tick(self) -> int:
        return int(self._newest.body.get("tick", -1)) if self._newest is not None else -1

    def _next_observation(self, after_tick: int, command_seq: int | None = None) -> p.Message:
        """The first observation after `after_tick` that shows `command_seq` applied (any one after
        `after_tick` if None), waiting up to step_timeout_s. If the command is not applied by then,
        the newest observation there is (`_info` says so, and flags it stale if it is old). If no
        observation came at all, the link is down: reconnect, re-arm, and take the first one."""
        deadline = time.monotonic() + self.cfg.step_timeout_s
        best: p.Message | None = None
        while (msg := self.client.receive(max(0.0, deadline - time.monotonic()))) is not None:
            if self._refused(msg, command_seq):
                command_seq = None  # it will never be applied: the next observation will do
            if self._reconnected:
                after_tick = -1  # a restarted server counts its ticks from the start again
            if msg.type != p.OBS or int(msg.body.get("tick", -1)) <= after_tick or not self._valid(msg):
                continue
            best = self._newest = msg
            if command_seq is None or msg.body.get("command_seq") == command_seq:
                while (more := self.client.receive(0.0)) is not None:  # plan on the newest one queued
                    self._refused(more, None)
                    if more.type == p.OBS and self._valid(more):
                        best = self._newest = more
                return best
        if best is not None:
            return best
        self.client.reconnect()
        self._reconnected = True
        if self.cfg.arm:
            self.client.request(p.ARM, {"clear_fault": False})
        return self._first_observation()

    def _first_observation(self) -> p.Message:
        deadline = time.monotonic() + self.cfg.step_timeout_s
        while (msg := self.client.receive(max(0.0, deadline - time.monotonic()))) is not None:
            if msg.type == p.OBS and self._valid(msg):
                self._newest = msg
                return msg
        raise ConnectionError(f"{self.cfg.connect}: connected, but no observation within {self.cfg.step_timeout_s} s")

    def _valid(self, msg: p.Message) -> bool:
        """An observation with every feature of the spec, of the right shape, and the applied action;
        a broken one is counted and skipped, never planned on."""
        try:
            for name, feature in self.spec_.observation.items():
                feature.check(name, msg.arrays[name])
            if msg.arrays["applied"].shape != (self.spec_.action_dim,):
                raise ValueError("applied action of the wrong shape")
        except (KeyError, ValueError):
            self.bad_observations += 1
            return False
        return True

    def _refused(self, msg: p.Message, command_seq: int | None) -> bool:
        """Raise RobotFault if the robot faulted or refuses to be driven; True if it dropped our command."""
        if msg.type == p.FAULT:
            raise RobotFault(f"the robot faulted: {msg.body.get('reason')}; re-arm it with bridge.clear_fault=true")
        if msg.type != p.ERROR or command_seq is None or msg.body.get("ref_seq") != command_seq:
            return False
        code = msg.body.get("code")
        if code in (p.DISARMED, p.FAULTED):
            raise RobotFault(f"the robot refused the command: {code}: {msg.body.get('detail')}")
        if code == p.NO_SESSION:  # the server restarted and no longer knows us
            self.client.reconnect()
            self._reconnected = True
            if self.cfg.arm:
                self.client.request(p.ARM, {"clear_fault": False})
        self.dropped_commands += 1
        return True

    def _with_reconnect(self, send):
        try:
            return send()
        except (zmq.ZMQError, ConnectionError):
            self.client.reconnect()
            return send()

    def _to_robot(self, action: np.ndarray) -> np.ndarray:
        """An action in the agent's units -> the robot's (the identity without normalize_actions)."""
        return action * self._half_span + self._middle if self.cfg.normalize_actions else action

    def _from_robot(self, action: np.ndarray) -> np.ndarray:
        return (action - self._middle) / self._half_span if self.cfg.normalize_actions else action

    def _observation(self, msg: p.Message) -> dict[str, np.ndarray]:
        return {k: np.array(msg.arrays[k]) for k in self.spec_.observation}

    def _info(self, msg: p.Message, sent: np.ndarray | None, applied: bool) -> dict[str, Any]:
        age = self.client.age_s(msg)
        reconnected, self._reconnected = self._reconnected, False
        return {"stale": age > self.max_age_s, "obs_age_s": age, "tick": int(msg.body.get("tick", -1)),
                "action_sent": sent, "action_applied": self._from_robot(np.array(msg.arrays["applied"], np.float32)),
                "command_applied": applied,
                "reconnected": reconnected, "mode": msg.body.get("mode")}


def box_of(feature) -> spaces.Box:
    dtype = np.dtype(feature.dtype)
    if dtype == np.uint8:
        return spaces.Box(0, 255, feature.shape, np.uint8)
    low = -np.inf if feature.low is None else feature.low
    high = np.inf if feature.high is None else feature.high
    return spaces.Box(low, high, feature.shape, dtype)
