"""What a robot is, as the agent needs to know it before the first step: its observation features,
its action's size and limits, and its control rate. The server sends it in `welcome`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robot_bridge.protocol import DTYPES, MALFORMED, MAX_ARRAY_BYTES, MAX_DIMS, ProtocolError


@dataclass(frozen=True)
class Feature:
    """One observation stream: e.g. image (64, 64, 3) uint8, proprio (8,) float32, audio (800,) float32."""

    shape: tuple[int, ...]
    dtype: str
    low: float | None = None  # bounds of every element, where the robot knows them
    high: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "_np_dtype", np.dtype(self.dtype))

    def check(self, name: str, value: np.ndarray) -> None:
        if value.shape != self.shape or value.dtype != self._np_dtype:
            raise ValueError(f"observation {name!r} is {value.dtype.name}{list(value.shape)}, "
                             f"the spec says {self.dtype}{list(self.shape)}")


@dataclass(frozen=True)
class RobotSpec:
    name: str
    control_hz: float
    observation: dict[str, Feature]
    action_low: np.ndarray  # (A,) float32, the absolute limits of every action dimension
    action_high: np.ndarray
    action_names: tuple[str, ...] = ()  # e.g. ("shoulder", "elbow"); empty means unnamed
    can_reset: bool = False  # a simulated robot can start a new scene; a real one cannot
    extra: dict[str, Any] = field(default_factory=dict)  # free-form facts (model file, units)

    def __post_init__(self) -> None:
        low = np.asarray(self.action_low, dtype=np.float32).reshape(-1)
        high = np.asarray(self.action_high, dtype=np.float32).reshape(-1)
        if low.shape != high.shape or not np.all(np.isfinite(low)) or not np.all(np.isfinite(high)) or np.any(low > high):
            raise ValueError(f"robot {self.name!r}: action limits must be finite, of one size, low <= high; "
                             f"got low={low.tolist()} high={high.tolist()}")
        if not self.control_hz > 0 or not math.isfinite(self.control_hz):
            raise ValueError(f"robot {self.name!r}: control_hz must be > 0, got {self.control_hz}")
        for key, f in self.observation.items():  # what the wire cannot carry is refused here, not mid-run
            size = math.prod(f.shape) * np.dtype(f.dtype).itemsize if f.dtype in DTYPES else 0
            if f.dtype not in DTYPES or len(f.shape) > MAX_DIMS or size > MAX_ARRAY_BYTES:
                raise ValueError(f"robot {self.name!r}: observation {key!r} ({f.dtype}{list(f.shape)}) cannot go on "
                                 f"the wire: dtypes {sorted(DTYPES)}, at most {MAX_DIMS} dims and {MAX_ARRAY_BYTES} bytes")
        object.__setattr__(self, "action_low", low)
        object.__setattr__(self, "action_high", high)

    @property
    def action_dim(self) -> int:
        return int(self.action_low.shape[0])

    @property
    def period(self) -> float:
        return 1.0 / self.control_hz

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name, "control_hz": self.control_hz, "can_reset": self.can_reset,
            "observation": {k: {"shape": list(f.shape), "dtype": f.dtype, "low": f.low, "high": f.high}
                            for k, f in self.observation.items()},
            "action": {"low": self.action_low.tolist(), "high": self.action_high.tolist(),
                       "names": list(self.action_names)},
            "extra": self.extra,
        }

    @classmethod
    def from_wire(cls, data: Any) -> RobotSpec:
        """The spec in a `welcome` body; a malformed one is a ProtocolError that says what is wrong."""
        try:
            features = {}
            for key, f in data["observation"].items():
                if f["dtype"] not in DTYPES:
                    raise ValueError(f"observation {key!r} has dtype {f['dtype']!r}")
                features[str(key)] = Feature(tuple(int(n) for n in f["shape"]), f["dtype"], f.get("low"), f.get("high"))
            action = data["action"]
            return cls(str(data["name"]), float(data["control_hz"]), features,
                       np.asarray(action["low"], dtype=np.float32), np.asarray(action["high"], dtype=np.float32),
                       tuple(str(n) for n in action.get("names", ())), bool(data.get("can_reset", False)),
                       dict(data.get("extra", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(MALFORMED, f"robot spec in welcome: {type(exc).__name__}: {exc}") from None
