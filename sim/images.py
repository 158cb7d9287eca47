"""Camera frames to observation images: one resize used by every env in `sim/`."""

from __future__ import annotations

import cv2
import numpy as np


def resize_image(frame: np.ndarray, size: int) -> np.ndarray:
    """An (H, W, 3) uint8 frame as a new (size, size, 3) uint8 array.

    Area averaging: each output pixel is the mean of the input pixels it covers, which removes
    aliasing when shrinking (and is an exact 2x2 mean for a frame twice the size).
    """
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) frame, got shape {frame.shape}")
    if frame.shape[:2] == (size, size):
        return frame.copy()
    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
