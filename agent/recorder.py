"""The episode recorder: the loop hands each step over and goes on; a writer thread encodes and writes.

    loop --record(step)--> bounded queue --> writer thread --> EpisodeWriter (PNG, JSON, MCAP)

Encoding a camera frame as PNG and a step as JSON costs milliseconds, which a robot's control loop
cannot spare, so none of it happens on the loop's thread. `record` only copies the step's arrays (the
body may reuse its buffers) and puts it in the queue. When the queue is full (the disk cannot keep
up), the step is dropped and counted rather than the loop stalled; the count is written at the end
of the file (metadata `omniloop.recording`) and reported by `omniloop episodes info`.

The writer flushes the file every `flush_every` steps (`run.record_flush_every`): after a `kill -9`,
every step up to the last flush reads back (the steps still queued are lost with the process). A
write that fails (a value JSON cannot carry, a full disk) stops the recording of that episode: the
file keeps every step before it, the error is logged and kept in `failure`, and the loop goes on,
since a robot must not stop for its recorder.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from agent.episodes import RECORDING_METADATA, EpisodeWriter, StepRecord

log = logging.getLogger("omniloop.recorder")

_CLOSE = object()  # the queue's last item: write the tail and close


class EpisodeRecorder:
    """Records one episode from a writer thread; `close()` waits for the queue to drain."""

    def __init__(self, path: str | Path, metadata: dict[str, str], attachments: dict[str, bytes] | None = None,
                 flush_every: int = 1, queue_steps: int = 256, audio_sample_rate: int = 16000) -> None:
        if queue_steps < 1:
            raise ValueError(f"queue_steps must be >= 1, got {queue_steps}")
        # the header, metadata and attachments are written here, before step 0: a bad path fails now
        self._writer = EpisodeWriter(path, metadata, attachments, flush_every=flush_every,
                                     audio_sample_rate=audio_sample_rate)
        self.path = self._writer.path
        self._queue: queue.Queue = queue.Queue(maxsize=queue_steps)
        self.recorded = 0  # steps handed over
        self.dropped = 0  # steps refused because the queue was full
        self.writer_cpu_s = 0.0  # CPU time the writer thread spent encoding and writing steps
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"recorder:{self.path.name}", daemon=True)
        self._thread.start()

    @property
    def written(self) -> int:
        """Steps the writer thread has written so far (flushed every `flush_every`)."""
        return self._writer.steps_written

    @property
    def failure(self) -> str | None:
        """Why the recording stopped, if a write failed."""
        return None if self._error is None else f"{self.path}: recording stopped: {self._error}"

    def record(self, step: StepRecord) -> bool:
        """Queue a step for writing; False if the queue is full (the step is counted as dropped) or
        the recording stopped on a failed write. Never blocks, never raises for the writer's sake."""
        if self._error is not None:
            return False
        if self._closed:
            raise RuntimeError(f"{self.path}: the recorder is closed; step {step.step} was not recorded")
        try:
            self._queue.put_nowait(_owned(step))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("%s: the writer is behind; %d steps dropped so far", self.path, self.dropped)
            return False
        self.recorded += 1
        return True

    def close(self) -> None:
        """Write every queued step, the recording's counts and the footer; a failure is in `failure`."""
        if not self._closed:
            self._closed = True
            self._queue.put(_CLOSE)  # blocks only while the queue is full, which the thread is draining
            self._thread.join()

    def __enter__(self) -> EpisodeRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while (item := self._queue.get()) is not _CLOSE:
            if self._error is not None:
                continue  # the episode's file stops at the failed step; the rest is drained, not written
            try:
                started = time.thread_time()
                self._writer.write(item)
                self.writer_cpu_s += time.thread_time() - started
            except Exception as exc:  # the loop goes on; the file ends at the step before
                self._error = exc
                log.error("%s", self.failure)
        try:
            self._writer.add_metadata(RECORDING_METADATA, {"steps": str(self._writer.steps_written),
                                                           "dropped_steps": str(self.dropped),
                                                           "failure": "" if self._error is None else str(self._error)})
        except Exception as exc:
            self._error = exc
            log.error("%s", self.failure)
        finally:
            try:
                self._writer.close()
            except Exception as exc:
                self._error = self._error or exc
                log.error("%s", self.failure)


def _owned(step: StepRecord) -> StepRecord:
    """The step with copies of its arrays: the body and the loop may write into theirs afterwards."""
    def copy(value):
        return value.copy() if isinstance(value, np.ndarray) else value

    return replace(
        step,
        observation={k: copy(v) for k, v in step.observation.items()},
        action_requested=copy(step.action_requested), action_sent=copy(step.action_sent),
        action_applied=copy(step.action_applied),
        sim_state=None if step.sim_state is None else {k: copy(v) for k, v in step.sim_state.items()},
        imagined=copy(step.imagined),
    )
