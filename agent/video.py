"""An MP4 of an episode: what the camera saw beside what the world model imagined, frame by frame.

Each frame is both images upscaled by an integer factor with nearest neighbour (so single pixels of
a 64x64 camera stay crisp squares), side by side with a gap, each under a label. The canvas is
padded to a multiple of 16 on both sides: H.264 works on 16x16 macroblocks, and imageio would
otherwise resize the frame behind our back. yuv420p is the pixel format browsers play.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import imageio.v2 as imageio
import numpy as np

GAP = 8  # pixels between the two panels
LABEL_HEIGHT = 20  # pixels of the band above each panel that holds its label
BLOCK = 16  # H.264 macroblock size; the canvas is a multiple of it
BACKGROUND = 24  # grey level of the canvas around the panels
TEXT_COLOUR = (235, 235, 235)


def compose_frame(
    real: np.ndarray, imagined: np.ndarray, scale: int = 4, labels: tuple[str, str] = ("camera", "imagined")
) -> np.ndarray:
    """(H1, W1, 3) and (H2, W2, 3) uint8 -> one (Hc, Wc, 3) uint8 canvas, Hc and Wc multiples of 16.

    The real panel's top-left corner is at (LABEL_HEIGHT, 0), the imagined one's at
    (LABEL_HEIGHT, W1 * scale + GAP).
    """
    big_real = upscale(real, scale)
    big_imagined = upscale(imagined, scale)
    left = big_real.shape[1] + GAP
    height = LABEL_HEIGHT + max(big_real.shape[0], big_imagined.shape[0])
    width = left + big_imagined.shape[1]
    canvas = np.full((round_up(height), round_up(width), 3), BACKGROUND, np.uint8)
    canvas[LABEL_HEIGHT : LABEL_HEIGHT + big_real.shape[0], : big_real.shape[1]] = big_real
    canvas[LABEL_HEIGHT : LABEL_HEIGHT + big_imagined.shape[0], left : left + big_imagined.shape[1]] = big_imagined
    for text, x in zip(labels, (0, left)):
        origin = (x + 3, LABEL_HEIGHT - 6)  # bottom-left of the text, inside the label band
        cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.45, TEXT_COLOUR, 1, cv2.LINE_AA)
    return canvas


def write_side_by_side(
    path: str | Path,
    real: Sequence[np.ndarray],
    imagined: Sequence[np.ndarray],
    fps: float,
    scale: int = 4,
    labels: tuple[str, str] = ("camera", "imagined"),
) -> None:
    """Write an H.264 MP4 whose frame i shows real[i] beside imagined[i]; both are (H, W, 3) uint8."""
    path = Path(path)
    if len(real) == 0 or len(imagined) == 0:
        raise ValueError(f"{path}: no frames to write (real has {len(real)}, imagined has {len(imagined)})")
    if len(real) != len(imagined):
        raise ValueError(f"{path}: real has {len(real)} frames but imagined has {len(imagined)}")
    if not fps > 0:
        raise ValueError(f"{path}: fps must be positive, got {fps}")
    if scale < 1:
        raise ValueError(f"{path}: scale must be a positive integer, got {scale}")
    _check_frames(real, "real", path)
    _check_frames(imagined, "imagined", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = imageio.get_writer(
        path,
        format="FFMPEG",
        mode="I",
        fps=fps,
        codec="libx264",
        quality=8,
        pixelformat="yuv420p",
        macro_block_size=BLOCK,
        ffmpeg_log_level="error",
        output_params=["-movflags", "+faststart"],  # the index up front: a browser starts playing at once
    )
    try:
        for frame_real, frame_imagined in zip(real, imagined):
            writer.append_data(compose_frame(frame_real, frame_imagined, scale, labels))
    finally:
        writer.close()


def _check_frames(frames: Sequence[np.ndarray], name: str, path: Path) -> None:
    """All frames (H, W, 3) uint8 and of one shape, or a ValueError naming the first that is not."""
    first = frames[0]
    for i, frame in enumerate(frames):
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            shape = getattr(frame, "shape", None)
            dtype = getattr(frame, "dtype", type(frame).__name__)
            raise ValueError(f"{path}: {name}[{i}] must be (H, W, 3) uint8, got shape {shape} dtype {dtype}")
        if frame.shape != first.shape:
            raise ValueError(f"{path}: {name}[{i}] has shape {frame.shape}, {name}[0] has {first.shape}")


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, 3) -> (H * scale, W * scale, 3), each pixel a scale x scale square."""
    return image.repeat(scale, axis=0).repeat(scale, axis=1)


def round_up(n: int) -> int:
    return -(-n // BLOCK) * BLOCK
