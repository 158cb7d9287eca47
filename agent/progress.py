"""The progress bar of a run: step, last episode's return and success (hit / miss), the smoothed
surprise and the planner's think time."""

from __future__ import annotations

import math
from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(self, total: int, done: int = 0, enabled: bool = True):
        self.enabled = enabled
        self.bar = RichProgress(
            MofNCompleteColumn(), BarColumn(bar_width=16), TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            disable=not enabled,
        )
        self.task = self.bar.add_task("run", total=total, completed=done, status="")
        self.last_return: float | None = None
        self.last_success: float | None = None
        self.surprise = 0.0
        self.think_ms = 0.0

    def __enter__(self) -> "Progress":
        self.bar.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.bar.__exit__(kind, exc, tb)

    def step(self, env_step: int, surprise: float, think_ms: float | None) -> None:
        if math.isfinite(surprise):  # one NaN would stay in the smoothed number for the rest of the run
            self.surprise += 0.05 * (surprise - self.surprise)  # smoothed, so the number can be read
        if think_ms is not None:
            self.think_ms += 0.05 * (think_ms - self.think_ms)
        self.bar.update(self.task, completed=env_step, status=self.status())

    def episode_done(self, row: dict) -> None:
        self.last_return = float(row["return"])
        self.last_success = row.get("success")

    def status(self) -> str:
        ret = "-" if self.last_return is None else f"{self.last_return:.1f}"
        ok = "" if self.last_success is None else (" hit" if self.last_success else " miss")
        return f"return {ret}{ok} | surprise {self.surprise:.2f} | think {self.think_ms:.0f}ms"
