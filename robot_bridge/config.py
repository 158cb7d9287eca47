"""Options of the agent side of the bridge (`bridge:` in configs/robot.yaml). A plain dataclass, so
that loading a config does not load ZeroMQ."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BridgeConfig:
    connect: str = "tcp://127.0.0.1:5555"
    server_key: str | None = None  # the robot's public key file (server.key): turns CURVE on
    client_key: str | None = None  # this agent's secret key file (client.key_secret)
    max_obs_age_s: float = 0.0  # older observations are stale and not planned on; 0: 2 control periods
    step_timeout_s: float = 1.0  # wait this long for the observation that shows a command applied
    connect_timeout_s: float = 3.0
    reconnect_tries: int = 5  # after a dropped link, before giving up
    arm: bool = True  # arm the robot before the first command, and again after a watchdog disarm
    episode_steps: int = 200  # agent steps per episode: a robot has no episodes of its own
    normalize_actions: bool = True  # the agent acts in [-1, 1]; the bridge maps that onto the robot's limits
    think_fraction: float = 0.6  # the planner's deadline is at most this share of a control period
    clock_sync_s: float = 5.0  # seconds between heartbeats that refine the estimate of the robot's clock

    def validate(self) -> None:
        for name in ("step_timeout_s", "connect_timeout_s", "clock_sync_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"bridge.{name} must be > 0, got {getattr(self, name)}")
        if self.max_obs_age_s < 0:
            raise ValueError(f"bridge.max_obs_age_s must be >= 0, got {self.max_obs_age_s}")
        if not 0 < self.think_fraction <= 1:
            raise ValueError(f"bridge.think_fraction must be in (0, 1], got {self.think_fraction}")
        if self.episode_steps < 1:
            raise ValueError(f"bridge.episode_steps must be >= 1, got {self.episode_steps}")
        if self.reconnect_tries < 1:
            raise ValueError(f"bridge.reconnect_tries must be >= 1, got {self.reconnect_tries}")
        if (self.server_key is None) != (self.client_key is None):
            raise ValueError("bridge.server_key and bridge.client_key go together: CURVE needs both")
