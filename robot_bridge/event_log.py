"""The server's JSON-lines log: every received command, every applied action, every event.

One line per record, `{"t": <unix s>, "event": ..., ...}`. The two stream records (a `command` per
accepted command and an `applied` per tick) are formatted by hand into a 64 KiB write buffer: at
1 kHz they are on the control loop's critical path, and `json.dumps` costs three times as much.
Everything else is rare, goes through `json.dumps`, and is flushed at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def _floats(values: np.ndarray | None) -> str:
    if values is None:
        return "null"
    return "[" + ",".join(map(repr, values.tolist())) + "]" if np.all(np.isfinite(values)) else json.dumps(values.tolist())


class EventLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1 << 16)

    def command(self, seq: int, action: np.ndarray | None) -> None:
        """An accepted command; `action` None is an explicit hold."""
        self._file.write(f'{{"t":{time.time():.6f},"event":"command","seq":{seq},"hold":{"true" if action is None else "false"},'
                         f'"action":{_floats(action)}}}\n')

    def applied(self, tick: int, command_seq: int | None, mode: str, watchdog: str, action: np.ndarray) -> None:
        seq = "null" if command_seq is None else command_seq
        self._file.write(f'{{"t":{time.time():.6f},"event":"applied","tick":{tick},"command_seq":{seq},'
                         f'"mode":"{mode}","watchdog":"{watchdog}","action":{_floats(action)}}}\n')

    def event(self, event: str, fields: dict) -> None:
        self._file.write(json.dumps({"t": time.time(), "event": event, **fields}) + "\n")
        self._file.flush()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
