"""The robot-side driver interface, in the spirit of LeRobot's `Robot`, and the sensors it composes with.

The server owns timing and safety; a driver only talks to hardware. Once per control period the
server calls `send_action` with an action that is already inside the limits, then
`get_observation`. A driver must be able to say what it really applied: a motor may saturate, a
gripper may stop on contact, and that is what the episode records.

    driver.spec              known before connect(): features, limits, control rate
    driver.connect()         open the hardware; raise DriverError with the reason if it is not there
    driver.get_observation() {feature name: array} as the spec says
    driver.send_action(a)    apply a (A,) float32 action; return the action really applied
    driver.hold()            stay put for one period (no command in time, or disarmed); returns what it applied
    driver.safe_state()      the state to fall back to after a long silence, a fault or an e-stop (idempotent)
    driver.disconnect()
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from robot_bridge.spec import Feature, RobotSpec


class DriverError(RuntimeError):
    """Hardware that is missing, refuses to open or stops answering; the message says which and why."""


class Driver(ABC):
    @property
    @abstractmethod
    def spec(self) -> RobotSpec:
        """The robot's features, limits and control rate; available before `connect()`."""

    @abstractmethod
    def connect(self) -> None:
        """Open the hardware. A missing device raises DriverError now, not on the first step."""

    @abstractmethod
    def disconnect(self) -> None:
        """Release the hardware; safe to call twice."""

    @abstractmethod
    def get_observation(self) -> dict[str, np.ndarray]:
        """The newest reading of every feature in the spec. The arrays may be the driver's own
        buffers: the server has sent (copied) them before it calls the driver again."""

    @abstractmethod
    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Apply `action` (A,) float32, already within the spec's limits; return what was applied."""

    @abstractmethod
    def hold(self) -> np.ndarray:
        """Stay where you are, for one control period: no valid command came in time, or the robot is
        disarmed. What that means is the driver's to say (zero velocity for a velocity-controlled base,
        the current pose for a position-controlled arm), so there is no default. Returns what was applied."""

    def safe_state(self) -> np.ndarray:
        """Go to, or stay in, the robot's safe state (brakes, zero torque); called every control period
        while the robot is faulted or timed out, so it must be idempotent. By default, hold."""
        return self.hold()

    def reset(self) -> None:
        """Start a new scene. Only drivers whose spec says `can_reset` are asked to."""
        raise DriverError(f"robot {self.spec.name!r} cannot reset its scene")


class Sensor(ABC):
    """A source of observation features that takes no action: a camera, a microphone."""

    @property
    @abstractmethod
    def features(self) -> dict[str, Feature]:
        """The features this sensor adds to the observation."""

    @property
    def sample_rates(self) -> dict[str, int]:
        """Samples per second of the features that are sampled signals (a microphone's audio), by key."""
        return {}

    @abstractmethod
    def connect(self) -> None:
        """Open the device; a missing one raises DriverError here."""

    @abstractmethod
    def disconnect(self) -> None:
        """Release the device; safe to call twice."""

    @abstractmethod
    def read(self) -> dict[str, np.ndarray]:
        """The newest reading of every feature."""


class WithSensors(Driver):
    """An actuator driver and sensors, seen as one robot: the sensors' features join the observation."""

    def __init__(self, actuator: Driver, sensors: list[Sensor]) -> None:
        self.actuator, self.sensors = actuator, sensors
        base = actuator.spec
        features = dict(base.observation)
        for sensor in sensors:
            clash = set(features) & set(sensor.features)
            if clash:
                raise DriverError(f"sensor {type(sensor).__name__} adds features {sorted(clash)} that the robot already has")
            features.update(sensor.features)
        extra = dict(base.extra)
        rates = {**extra.get("sample_rates", {}), **{k: v for s in sensors for k, v in s.sample_rates.items()}}
        if rates:  # what an episode file must say of its audio, for it to play at the right pitch
            extra["sample_rates"] = rates
        self._spec = RobotSpec(base.name, base.control_hz, features, base.action_low, base.action_high,
                               base.action_names, base.can_reset, extra)

    @property
    def spec(self) -> RobotSpec:
        return self._spec

    def connect(self) -> None:
        opened: list[Sensor | Driver] = []
        try:
            for part in (*self.sensors, self.actuator):  # sensors first: a missing camera stops us before motors move
                part.connect()
                opened.append(part)
        except BaseException:
            for part in reversed(opened):
                part.disconnect()
            raise

    def disconnect(self) -> None:
        self.actuator.disconnect()
        for sensor in self.sensors:
            sensor.disconnect()

    def get_observation(self) -> dict[str, np.ndarray]:
        obs = self.actuator.get_observation()
        for sensor in self.sensors:
            obs.update(sensor.read())
        return obs

    def send_action(self, action: np.ndarray) -> np.ndarray:
        return self.actuator.send_action(action)

    def hold(self) -> np.ndarray:
        return self.actuator.hold()

    def safe_state(self) -> np.ndarray:
        return self.actuator.safe_state()

    def reset(self) -> None:
        self.actuator.reset()
