"""`sim`: a MuJoCo task of `sim/` served as if it were a real robot.

The server calls `send_action` once per control period, so the simulation advances one control
period per tick of the wall clock: it runs in real time, at the task's control rate, in the
server's process. Its scene can be reset (`can_reset`), which a real robot's cannot. When the task's
own episode ends (a time limit, a fall), the driver starts a new scene by itself, as the world goes on.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

import sim
from robot_bridge.driver import Driver, DriverError
from robot_bridge.spec import Feature, RobotSpec

NO_TIME_LIMIT = 10**9  # agent steps: a robot has no episodes of its own


class SimDriver(Driver):
    def __init__(self, task: str = "reach", image_size: int = 64, pixels: bool = True, seed: int = 0) -> None:
        self.cfg = sim.EnvConfig(name=task, image_size=image_size, pixels=pixels, episode_length=NO_TIME_LIMIT)
        self.seed = seed
        try:
            self.env = sim.make(self.cfg, seed=seed)
        except ValueError as exc:
            raise DriverError(f"sim driver: {exc}") from None
        self._spec = spec_of(self.env, task)
        self._obs: dict[str, np.ndarray] | None = None
        self.scenes = 0

    @property
    def spec(self) -> RobotSpec:
        return self._spec

    def connect(self) -> None:
        self.reset()

    def disconnect(self) -> None:
        self.env.close()

    def reset(self) -> None:
        self._obs, _ = self.env.reset(seed=self.seed * 100_003 + self.scenes)
        self.scenes += 1

    def get_observation(self) -> dict[str, np.ndarray]:
        if self._obs is None:
            raise DriverError("sim driver: get_observation() before connect()")
        return {k: np.asarray(v) for k, v in self._obs.items()}

    def hold(self) -> np.ndarray:
        """Zero actuation (no torque, for the Reach arm's motors) for one control period: time goes on."""
        return self.send_action(np.clip(np.zeros(self._spec.action_dim, np.float32), self._spec.action_low,
                                        self._spec.action_high))

    def send_action(self, action: np.ndarray) -> np.ndarray:
        applied = np.clip(np.asarray(action, np.float32), self._spec.action_low, self._spec.action_high)
        self._obs, _, terminated, truncated, _ = self.env.step(applied)
        if terminated or truncated:
            self.reset()
        return applied



def spec_of(env, task: str) -> RobotSpec:
    features = {}
    for key, box in env.observation_space.spaces.items():
        low, high = float(np.min(box.low)), float(np.max(box.high))
        features[key] = Feature(tuple(box.shape), box.dtype.name,
                                low if np.isfinite(low) else None, high if np.isfinite(high) else None)
    action = env.action_space
    if not isinstance(action, spaces.Box):
        raise DriverError(f"sim driver: task {task!r} has a {type(action).__name__} action space; the bridge drives Boxes")
    layout = getattr(env.unwrapped, "POSE_LAYOUT", None)  # tasks that say where their joints are in proprio
    extra: dict = {"pose": dict(layout)} if layout else {}
    if "audio" in features:
        extra["sample_rates"] = {"audio": sim.AUDIO_SAMPLE_RATE}
    return RobotSpec(f"sim:{task}", 1.0 / sim.control_period(env), features, action.low, action.high, can_reset=True,
                     extra=extra)
