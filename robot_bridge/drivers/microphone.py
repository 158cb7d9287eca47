"""`microphone`: sound from a sounddevice input stream, as the samples of the last control period.

PortAudio's callback thread appends to a ring buffer; `read()` returns its newest `samples` values.
Without PortAudio (`libportaudio2`), or without an input device, `connect()` raises DriverError
with the reason, before the robot moves.
"""

from __future__ import annotations

import threading

import numpy as np

from robot_bridge.driver import DriverError, Sensor
from robot_bridge.spec import Feature


class Microphone(Sensor):
    def __init__(self, device: int | str | None = None, sample_rate: int = 16_000, samples: int = 800,
                 key: str = "audio") -> None:
        self.device, self.sample_rate, self.samples, self.key = device, sample_rate, samples, key
        self._ring = np.zeros(samples, np.float32)
        self._lock = threading.Lock()
        self._stream = None

    @property
    def features(self) -> dict[str, Feature]:
        return {self.key: Feature((self.samples,), "float32", -1.0, 1.0)}

    @property
    def sample_rates(self) -> dict[str, int]:
        return {self.key: int(self.sample_rate)}

    def connect(self) -> None:
        try:
            import sounddevice  # noqa: PLC0415 - PortAudio is loaded only by robots that have a microphone
        except OSError as exc:  # sounddevice raises OSError, not ImportError, when PortAudio is missing
            raise DriverError(f"microphone: PortAudio is not installed ({exc}); apt-get install libportaudio2") from None
        try:
            inputs = [d for d in sounddevice.query_devices() if d["max_input_channels"] > 0]
            if not inputs:
                raise DriverError("microphone: this machine has no sound input device")
            self._stream = sounddevice.InputStream(device=self.device, channels=1, samplerate=self.sample_rate,
                                                   dtype="float32", callback=self._heard)
            self._stream.start()
        except sounddevice.PortAudioError as exc:
            self._stream = None
            raise DriverError(f"microphone {self.device!r}: PortAudio cannot open it: {exc}") from None
        except ValueError as exc:  # an unknown device name or index
            self._stream = None
            raise DriverError(f"microphone {self.device!r}: {exc}") from None

    def disconnect(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None

    def read(self) -> dict[str, np.ndarray]:
        if self._stream is None:
            raise DriverError("microphone: read() before connect()")
        with self._lock:
            return {self.key: self._ring.copy()}

    def _heard(self, indata: np.ndarray, frames: int, time_info, status) -> None:
        mono = indata[:, 0]
        with self._lock:
            if len(mono) >= self.samples:
                self._ring[:] = mono[-self.samples :]
            else:
                self._ring[: -len(mono)] = self._ring[len(mono) :]
                self._ring[-len(mono) :] = mono
