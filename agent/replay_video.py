"""An episode as a video: the camera, the world model's picture of the same moment, and the episode's
surprise, reward and think time over time with a cursor at the current step.

    | camera (4x) | imagined (4x) | surprise / reward / think ms, the whole episode, cursor at t |

The strip charts are drawn once with matplotlib; each frame only copies them and draws the cursor,
so a 500-step episode renders in seconds. A step without an imagined frame (an episode recorded
without images to picture, or before pictures were recorded) shows an empty panel that says so.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import imageio.v2 as imageio
import numpy as np

from agent.episodes import Episode, EpisodeError, StepRecord
from agent.video import BACKGROUND, BLOCK, GAP, LABEL_HEIGHT, TEXT_COLOUR, round_up, upscale

SCALE = 4  # camera pixels -> video pixels, nearest neighbour
CHART_WIDTH = 480
CURSOR = (255, 80, 80)
SERIES = (("surprise", "surprise (total)"), ("reward", "reward"), ("think_ms", "think time, ms"))


def write_episode_video(episode: Episode, path: Path, fps: float | None = None) -> tuple[int, tuple[int, int]]:
    """Write the MP4; returns (frames, (height, width)). `fps` defaults to the episode's control rate."""
    steps = [s for s in episode.steps if "image" in s.observation]
    if not steps:
        raise EpisodeError(f"{episode.path}: no camera frames to make a video of")
    fps = fps or float(episode.metadata.get("control_hz") or 0) or _rate_from_times(steps)
    size = steps[0].observation["image"].shape[:2]
    panel = (size[0] * SCALE, size[1] * SCALE)
    chart, axes_x = _charts(steps, panel[0])
    height = round_up(LABEL_HEIGHT + panel[0])
    width = round_up(2 * panel[1] + 2 * GAP + chart.shape[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                                pixelformat="yuv420p", macro_block_size=BLOCK, ffmpeg_log_level="error",
                                output_params=["-movflags", "+faststart"])
    try:
        span = (steps[0].step, steps[-1].step)  # the charts' x axis is the step number, gaps included
        for step in steps:
            writer.append_data(_frame(step, span, chart, axes_x, (height, width), panel))
    finally:
        writer.close()
    return len(steps), (height, width)


def _frame(step: StepRecord, span: tuple[int, int], chart: np.ndarray, axes_x: tuple[int, int],
           canvas_size: tuple[int, int], panel: tuple[int, int]) -> np.ndarray:
    canvas = np.full((*canvas_size, 3), BACKGROUND, np.uint8)
    top = LABEL_HEIGHT
    camera = step.observation["image"]
    canvas[top:top + panel[0], :panel[1]] = upscale(camera, SCALE)
    left = panel[1] + GAP
    if step.imagined is not None and step.imagined.shape == camera.shape:
        canvas[top:top + panel[0], left:left + panel[1]] = upscale(step.imagined, SCALE)
    else:
        cv2.putText(canvas, "no picture recorded", (left + 8, top + panel[0] // 2), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, TEXT_COLOUR, 1, cv2.LINE_AA)
    chart_left = 2 * (panel[1] + GAP)
    canvas[top:top + chart.shape[0], chart_left:chart_left + chart.shape[1]] = chart
    x0, x1 = axes_x
    x = chart_left + x0 + round((x1 - x0) * (step.step - span[0]) / max(span[1] - span[0], 1))
    canvas[top:top + chart.shape[0], x:x + 2] = CURSOR
    for text, x_text in (("camera", 0), ("imagined", left), (f"step {step.step}", chart_left)):
        cv2.putText(canvas, text, (x_text + 3, LABEL_HEIGHT - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, TEXT_COLOUR, 1,
                    cv2.LINE_AA)
    return canvas


def _charts(steps: list[StepRecord], height: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The three strip charts as one RGB image of `height` rows, and the pixel columns of their x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dpi = 100
    fig, axes = plt.subplots(len(SERIES), 1, sharex=True, figsize=(CHART_WIDTH / dpi, height / dpi), dpi=dpi)
    fig.patch.set_facecolor((BACKGROUND / 255,) * 3)
    x = [s.step for s in steps]
    for ax, (key, label) in zip(axes, SERIES):
        values = [_value(s, key) for s in steps]
        ax.plot(x, values, color="#8fc1ff", linewidth=1)
        ax.set_facecolor((0.12, 0.12, 0.12))
        ax.set_ylabel(label, color="white", fontsize=7)
        ax.tick_params(colors="white", labelsize=6)
        ax.margins(x=0)
        if all(np.isnan(v) for v in values):
            ax.text(0.5, 0.5, "not recorded", color="white", ha="center", va="center", transform=ax.transAxes,
                    fontsize=7)
    axes[-1].set_xlabel("step", color="white", fontsize=7)
    fig.tight_layout(pad=0.4)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy()
    left = axes[0].transData.transform((x[0], 0))[0]
    right = axes[0].transData.transform((x[-1], 0))[0]
    plt.close(fig)
    return image, (int(round(left)), int(round(right)))


def _value(step: StepRecord, key: str) -> float:
    if key == "surprise":
        return float((step.surprise or {}).get("total", np.nan))
    if key == "reward":
        return np.nan if step.reward is None else float(step.reward)
    return float((step.plan or {}).get(key, np.nan))


def _rate_from_times(steps: list[StepRecord]) -> float:
    """Steps per second from the capture times, for files that do not record their control rate."""
    if len(steps) < 2 or steps[-1].time_ns <= steps[0].time_ns:
        return 20.0
    return (len(steps) - 1) / ((steps[-1].time_ns - steps[0].time_ns) / 1e9)
