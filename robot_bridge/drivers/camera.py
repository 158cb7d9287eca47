"""`camera`: frames from OpenCV's VideoCapture, from a device index, a video file or a stream URL.

A reader thread keeps only the newest frame, so the control loop never waits for the camera and never
sees a frame older than one camera period. A file plays at its own frame rate and loops, so a
recorded video can stand in for a camera.
"""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np

from robot_bridge.driver import DriverError, Sensor
from robot_bridge.spec import Feature

FIRST_FRAME_TIMEOUT_S = 5.0


class Camera(Sensor):
    def __init__(self, source: int | str = 0, size: int = 64, key: str = "image") -> None:
        self.source = int(source) if isinstance(source, str) and source.isdigit() else source
        self.size, self.key = size, key
        self._capture: cv2.VideoCapture | None = None
        self._frame: np.ndarray | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames_read = 0

    @property
    def features(self) -> dict[str, Feature]:
        return {self.key: Feature((self.size, self.size, 3), "uint8", 0.0, 255.0)}

    @property
    def is_file(self) -> bool:
        return isinstance(self.source, str) and "://" not in self.source

    def connect(self) -> None:
        capture = cv2.VideoCapture(self.source)
        if not capture.isOpened():
            raise DriverError(f"camera {self.source!r}: OpenCV cannot open it (no such device, file or stream)")
        ok, frame = capture.read()
        if not ok or frame is None:
            capture.release()
            raise DriverError(f"camera {self.source!r}: it opened but gave no frame")
        self._capture = capture
        self._frame = self._convert(frame)
        self._stop.clear()
        self._thread = threading.Thread(target=self._read_forever, name=f"camera {self.source}", daemon=True)
        self._thread.start()

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def read(self) -> dict[str, np.ndarray]:
        if self._frame is None:
            raise DriverError(f"camera {self.source!r}: read() before connect()")
        if self._thread is not None and not self._thread.is_alive():
            raise DriverError(f"camera {self.source!r}: the camera stopped giving frames")
        with self._lock:
            return {self.key: self._frame}

    def _read_forever(self) -> None:
        capture = self._capture
        fps = capture.get(cv2.CAP_PROP_FPS) if self.is_file else 0.0
        period = 1.0 / fps if fps and fps > 0 else 0.0
        next_at = time.monotonic()
        while not self._stop.is_set():
            ok, frame = capture.read()
            if not ok and self.is_file:  # the end of a file: play it again
                capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = capture.read()
            if not ok:
                return  # read() now raises: the device is gone
            converted = self._convert(frame)
            with self._lock:
                self._frame = converted
                self.frames_read += 1
            if period:  # a file plays at its own rate; a device paces itself
                next_at += period
                time.sleep(max(0.0, next_at - time.monotonic()))

    def _convert(self, frame: np.ndarray) -> np.ndarray:
        """BGR at any size -> RGB, centre-cropped to a square, area-resized to size x size."""
        h, w = frame.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = frame[top : top + side, left : left + side]
        resized = cv2.resize(square, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(cv2.cvtColor(resized, cv2.COLOR_BGR2RGB))
