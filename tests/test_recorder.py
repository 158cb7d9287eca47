"""The recorder: steps written from a thread read back whole; a full queue drops, never stalls; a write
error reaches the loop; a kill -9 leaves every flushed step."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.episodes import EpisodeWriter, StepRecord, read_episode
from agent.recorder import EpisodeRecorder
from test_episodes import METADATA, assert_same_step, kill_when_flushed, make_record

REPO = Path(__file__).resolve().parents[1]


def test_steps_recorded_from_the_thread_read_back_whole_with_the_counts(tmp_path: Path) -> None:
    path = tmp_path / "rec.mcap"
    records = [make_record(i) for i in range(12)]
    with EpisodeRecorder(path, METADATA, {"model.xml": b"<mujoco/>"}, flush_every=3) as recorder:
        for record in records:
            assert recorder.record(record)
            record.observation["image"][:] = 0  # the loop may reuse its buffers: the recorder holds copies
    episode = read_episode(path)
    assert episode.complete and len(episode.steps) == 12
    for got, want in zip(episode.steps, [make_record(i) for i in range(12)]):
        assert_same_step(got, want)
    assert episode.recording == {"steps": "12", "dropped_steps": "0", "failure": ""}
    assert episode.message_counts["/reward"] == 12 and episode.message_counts["/camera/image"] == 12
    assert episode.message_counts["/instruction"] == 6  # every other step has one


def test_a_full_queue_drops_and_counts_steps_and_never_blocks(tmp_path: Path, monkeypatch) -> None:
    stuck, release = threading.Event(), threading.Event()
    write = EpisodeWriter.write

    def stuck_write(self, record):  # a disk that stops answering
        stuck.set()
        release.wait(10)
        write(self, record)

    monkeypatch.setattr(EpisodeWriter, "write", stuck_write)
    recorder = EpisodeRecorder(tmp_path / "slow.mcap", METADATA, queue_steps=3)
    start = time.perf_counter()
    accepted = [recorder.record(make_record(0))]
    assert stuck.wait(5)  # the thread holds step 0
    accepted += [recorder.record(make_record(i)) for i in range(1, 10)]
    assert time.perf_counter() - start < 5.0  # the loop went on while the writer was stuck
    # three steps wait in the queue, the other six are dropped
    assert accepted == [True] * 4 + [False] * 6 and recorder.dropped == 6
    release.set()
    recorder.close()
    episode = read_episode(tmp_path / "slow.mcap")
    assert [s.step for s in episode.steps] == [0, 1, 2, 3]
    assert episode.recording == {"steps": "4", "dropped_steps": "6", "failure": ""}


def test_a_write_error_stops_the_recording_not_the_loop_and_the_steps_before_it_stay(tmp_path: Path) -> None:
    path = tmp_path / "nan.mcap"
    recorder = EpisodeRecorder(path, METADATA)
    assert recorder.record(make_record(0))
    bad = make_record(1)
    bad.reward = float("nan")  # JSON cannot carry it: the writer refuses the step
    assert recorder.record(bad)  # queued: the writer has not seen it yet
    deadline = time.monotonic() + 10
    step = 2
    while recorder.failure is None and time.monotonic() < deadline:  # the loop goes on meanwhile
        recorder.record(make_record(step))
        step += 1
        time.sleep(0.01)
    assert recorder.failure is not None and "nan.mcap" in recorder.failure
    assert "step 1: /reward holds NaN" in recorder.failure
    assert not recorder.record(make_record(step))  # once the writer met the NaN, record() says no
    recorder.close()  # and closing never raises for the writer's sake
    episode = read_episode(path)
    assert [s.step for s in episode.steps] == [0] and episode.complete
    assert episode.recording["failure"].endswith("/reward holds NaN or infinity, which JSON cannot carry")


def test_a_killed_recorder_leaves_every_flushed_step(tmp_path: Path) -> None:
    path = tmp_path / "killed.mcap"
    child = (
        "import sys, time\n"
        f"sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]\n"
        "from agent.recorder import EpisodeRecorder\n"
        "from test_episodes import METADATA, make_record\n"
        f"recorder = EpisodeRecorder({str(path)!r}, METADATA, flush_every=1)\n"
        "for step in range(100_000):\n"
        "    recorder.record(make_record(step))\n"
        "    print(recorder.written, flush=True)\n"
        "    time.sleep(0.002)\n"
    )
    want = 25
    kill_when_flushed(child, want)
    episode = read_episode(path)
    assert not episode.complete and len(episode.steps) >= want
    for got in episode.steps:
        assert_same_step(got, make_record(got.step))
    assert [s.step for s in episode.steps] == list(range(len(episode.steps)))


def test_recorder_refuses_a_step_after_close(tmp_path: Path) -> None:
    recorder = EpisodeRecorder(tmp_path / "closed.mcap", METADATA)
    recorder.close()
    with pytest.raises(RuntimeError, match="closed"):
        recorder.record(StepRecord(step=0, time_ns=1, observation={"proprio": np.zeros(2, np.float32)},
                                   action_requested=None, action_sent=None, action_applied=None, reward=0.0))
