"""A run's plots as PNGs: the learning curve (episode return, success rate and surprise against env
steps) and the learner's health (losses, gradient norm, expert balance, non-finite updates).

Reads the metrics CSV (`agent.metrics`), one row per episode. Each panel takes the first of its
column names that the CSV has; a panel whose column is absent (an env without success, a run that
logs no surprise) says so instead of failing, so the plot works for every env.

Uses matplotlib's object API with the Agg canvas: no pyplot, so no global figure registry to leak
into and no GUI backend is ever touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from agent.metrics import Value, read_metrics

SUCCESS_WINDOW = 10  # episodes in the rolling success rate


@dataclass(frozen=True)
class Panel:
    columns: tuple[str, ...]  # metric names to look for, first found wins
    title: str
    ylabel: str


RETURN = Panel(("return", "episode_return"), "Episode return", "return")
SUCCESS = Panel(("success",), f"Success (rolling mean over the last {SUCCESS_WINDOW} episodes)", "success rate")
SURPRISE = Panel(("surprise", "surprise_mean", "mean_surprise"), "Mean surprise per episode", "surprise")


def plot_learning_curve(metrics_csv: Path, out_png: Path, x: str = "env_step") -> None:
    """Write a PNG of three stacked panels (return, rolling success, surprise) against column `x`.

    Rows without `x` are left out; if no row has it, the episode index is the x axis.
    """
    metrics_csv, out_png = Path(metrics_csv), Path(out_png)
    rows = read_metrics(metrics_csv)
    xs, xlabel = _x_values(rows, x)
    figure = Figure(figsize=(8, 9), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(3, 1, sharex=True)
    figure.suptitle(f"Learning curve: {metrics_csv.parent.name or metrics_csv.stem}")
    for ax, panel in zip(axes, (RETURN, SUCCESS, SURPRISE)):
        _draw(ax, panel, rows, xs)
    axes[1].set_ylim(-0.05, 1.05)
    axes[-1].set_xlabel(xlabel)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=100)


def _x_values(rows: list[dict[str, Value]], x: str) -> tuple[list[float | None], str]:
    """The x of every row (None where it has none) and the axis label."""
    if any(_number(row.get(x)) is not None for row in rows):
        return [_number(row.get(x)) for row in rows], x.replace("_", " ")
    return [float(i) for i in range(len(rows))], f"episode (the CSV has no '{x}' column)"


def _draw(ax: Axes, panel: Panel, rows: list[dict[str, Value]], xs: list[float | None]) -> None:
    ax.set_title(panel.title)
    ax.set_ylabel(panel.ylabel)
    ax.grid(alpha=0.3)
    column = next((c for c in panel.columns if any(c in row for row in rows)), None)
    if column is None:
        _note(ax, f"not recorded (no '{panel.columns[0]}' column)")
        return
    points = [(px, _number(row.get(column))) for px, row in zip(xs, rows)]
    points = [(px, py) for px, py in points if px is not None and py is not None]
    if not points:
        _note(ax, f"no numeric '{column}' values")
        return
    px, py = (np.asarray(v, np.float64) for v in zip(*points))
    if panel is SUCCESS:
        py = _rolling_mean(py, SUCCESS_WINDOW)
    ax.plot(px, py, marker="." if len(px) < 50 else None, linewidth=1.5)


def _note(ax: Axes, text: str) -> None:
    """Grey text in the middle of an empty panel, saying why it is empty."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def _rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """(N,) -> (N,): mean of the last `window` values up to each point (fewer at the start)."""
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def _number(value: Value | None) -> float | None:
    """A finite float, or None for a missing, non-numeric or non-finite cell."""
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


# Training health: one panel per question a person asks when a run goes wrong.
HEAD_LOSSES = ("consistency", "reward", "value", "reconstruction", "policy")


def plot_health(metrics_csv: Path, out_png: Path, x: str = "env_step") -> None:
    """Write a PNG of the learner's health against column `x`: the loss of each head, the gradient
    norm (before clipping), the experts' load balance (max / mean load; 1 is perfect) and the
    router's entropy, and the updates refused for a non-finite loss (with weights restored)."""
    metrics_csv, out_png = Path(metrics_csv), Path(out_png)
    rows = read_metrics(metrics_csv)
    xs, xlabel = _x_values(rows, x)
    figure = Figure(figsize=(11, 7.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2, sharex=True).ravel()
    figure.suptitle(f"Training health: {metrics_csv.parent.name or metrics_csv.stem}")

    drawn = [_lines(axes[0], rows, xs, {h: f"train_{h}_loss" for h in HEAD_LOSSES}, "Loss of each head", "loss")]
    axes[0].set_yscale("symlog", linthresh=1e-3)  # the policy loss is negative
    drawn.append(_lines(axes[1], rows, xs, {"gradient norm": "train_grad_norm"}, "Gradient norm (before clipping)", "norm"))
    drawn.append(_lines(axes[2], rows, xs, {"max / mean expert load": "train_moe_max_load",
                                            "router entropy (nats)": "train_moe_entropy"},
                        "Mixture of Experts: balance and router entropy", "ratio / nats"))
    if drawn[-1]:
        axes[2].axhline(1.0, color="grey", ls=":", lw=1)
    drawn.append(_lines(axes[3], rows, xs, {"updates skipped (non-finite)": "skipped_updates",
                                            "good weights restored": "restored_weights"},
                        "Non-finite losses, counted since the start", "count"))
    for ax, ok in zip(axes, drawn):
        if not ok:
            _note(ax, "not recorded in this run")
    for ax in axes[2:]:
        ax.set_xlabel(xlabel)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=100)


def _lines(ax: Axes, rows: list[dict[str, Value]], xs: list[float | None], columns: dict[str, str],
           title: str, ylabel: str) -> bool:
    """One line per label -> column that has numbers; False if none had any."""
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    drawn = False
    for label, column in columns.items():
        points = [(px, _number(row.get(column))) for px, row in zip(xs, rows)]
        points = [(px, py) for px, py in points if px is not None and py is not None]
        if points:
            px, py = zip(*points)
            ax.plot(px, py, label=label, linewidth=1.3)
            drawn = True
    if drawn:
        ax.legend(fontsize=8)
    return drawn
