"""JSON for records that may hold numpy values (RNG states, counters, plan traces)."""

from __future__ import annotations

import numpy as np


def json_default(value: object) -> object:
    """`json.dumps(..., default=json_default)`: numpy scalars and arrays become plain JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")
