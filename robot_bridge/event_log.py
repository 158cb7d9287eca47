"""The server's JSON-lines log: every received command, every applied action, every event.

One line per record, `{"t": <unix s>, "event": ..., ...}`; NaN and infinity (which JSON lacks) are
written as null. At 1 kHz the two stream records (a `command` per received command and an `applied`
per tick) take a core's time from the control loop, so they are encoded by msgspec, in C (a quarter
of the cost of hand-formatted f-strings), into a 64 KiB write buffer. The server writes them after
the tick's observation has left, and flushes them every half second; a full buffer is written at
once. So a write is at most 64 KiB (about 20 µs), about once in 250 ticks with a 2-value action.
Everything else is rare and is flushed at once, but for refused messages, which a flood could make
frequent: they wait for the next flush.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np


def _plain(value: Any) -> Any:
    """numpy values as the Python values JSON can hold (msgspec's hook for types it does not know)."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"cannot log a {type(value).__name__}")


class EventLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab", buffering=1 << 16)
        self._encoder = msgspec.json.Encoder(enc_hook=_plain)

    def command(self, seq: int, action: np.ndarray | None, refused: str | None = None, t: float | None = None) -> None:
        """A received command (at time `t`, default now): accepted (`action` None is an explicit hold),
        or refused with an error code."""
        self._write({"t": t or time.time(), "event": "command", "seq": seq, "refused": refused,
                     "action": None if action is None else action.tolist()})

    def applied(self, tick: int, command_seq: int | None, mode: str, watchdog: str, action: np.ndarray,
                t: float | None = None) -> None:
        """The action applied at `tick` (at time `t`, default now), and the command it obeys."""
        self._write({"t": t or time.time(), "event": "applied", "tick": tick, "command_seq": command_seq,
                     "mode": mode, "watchdog": watchdog, "action": action.tolist()})

    def event(self, event: str, fields: dict) -> None:
        self._write({"t": time.time(), "event": event, **fields})
        if event != "error":
            self._file.flush()

    def _write(self, record: dict) -> None:
        self._file.write(self._encoder.encode(record) + b"\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
