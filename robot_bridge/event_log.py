"""The server's JSON-lines log: every received command, every applied action, every event.

One line per record, `{"t": <unix s>, "event": ..., ...}`. The two stream records (a `command` per
accepted command and an `applied` per tick) are formatted by hand into a 64 KiB write buffer: at
1 kHz they are on the control loop's critical path, and `json.dumps` costs three times as much.
Everything else is rare, goes through `json.dumps`, and is flushed at once, but for refused
messages, which a flood could make frequent: they wait for the next flush, every 100 ticks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def _floats(values: np.ndarray | None) -> str:
    """A JSON list of the values; NaN and infinity (which JSON lacks) become null."""
    if values is None:
        return "null"
    values = np.asarray(values, np.float64).ravel()
    if np.isfinite(values).all():
        return "[" + ",".join(map(repr, values.tolist())) + "]"
    return json.dumps([v if np.isfinite(v) else None for v in values.tolist()])


class EventLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1 << 16)

    def command(self, seq: int, action: np.ndarray | None, refused: str | None = None) -> None:
        """A received command: accepted (`action` None is an explicit hold), or refused with an error code."""
        verdict = "null" if refused is None else json.dumps(refused)
        self._file.write(f'{{"t":{time.time():.6f},"event":"command","seq":{seq},"refused":{verdict},'
                         f'"action":{_floats(action)}}}\n')

    def applied(self, tick: int, command_seq: int | None, mode: str, watchdog: str, action: np.ndarray) -> None:
        seq = "null" if command_seq is None else command_seq
        self._file.write(f'{{"t":{time.time():.6f},"event":"applied","tick":{tick},"command_seq":{seq},'
                         f'"mode":"{mode}","watchdog":"{watchdog}","action":{_floats(action)}}}\n')

    def event(self, event: str, fields: dict) -> None:
        self._file.write(json.dumps({"t": time.time(), "event": event, **fields}) + "\n")
        if event != "error":
            self._file.flush()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
