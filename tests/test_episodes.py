"""Episode files: every channel round-trips, a kill -9 leaves a readable file, bad files are named."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from mcap.reader import make_reader
from mcap.writer import Writer

from agent.episodes import (
    TOPIC_IMAGE,
    EpisodeError,
    EpisodeWriter,
    StepRecord,
    episode_path,
    read_episode,
)

REPO = Path(__file__).resolve().parents[1]
METADATA = {"run": "unit", "seed": "7", "env": "reach", "code_version": "abc123", "episode": "12"}


def make_record(step: int, size: int = 16, samples: int = 50) -> StepRecord:
    """A step whose every field is a deterministic function of `step`; used by the killed writer too."""
    rng = np.random.default_rng(step)
    observation: dict[str, np.ndarray | str] = {
        "image": rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8),
        "proprio": rng.standard_normal(9).astype(np.float32),
        "audio": rng.uniform(-1, 1, samples).astype(np.float32),
    }
    if step % 2 == 0:
        observation["instruction"] = f"reach the red target, try {step}"
    return StepRecord(
        step=step,
        time_ns=1_700_000_000_123_456_789 + step * 50_000_000,
        observation=observation,
        action_requested=rng.uniform(-2, 2, 3).astype(np.float32),
        action_sent=rng.uniform(-1, 1, 3).astype(np.float32),
        action_applied=None if step % 3 == 0 else rng.uniform(-1, 1, 3).astype(np.float32),
        reward=float(rng.standard_normal()) if step % 4 else None,
        terminated=step % 5 == 4,
        truncated=step % 7 == 6,
        success=None if step % 2 else bool(step % 4),
        surprise={"total": float(rng.random()), "latent": float(rng.random()), "reward": float(rng.random())},
        plan={"iterations": 6, "best_return": float(rng.standard_normal()), "mean_return": -0.5, "think_ms": 3.25,
              "elites": [1, 2, 3]},
        sim_state={"time": np.array(0.02 * step), "qpos": rng.standard_normal(7), "qvel": rng.standard_normal(6),
                   "act": np.zeros(0)},
        imagined=None if step % 2 else rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8),
        # the plan takes 7 ms, the step's result comes back 12 ms after the observation
        action_time_ns=1_700_000_000_123_456_789 + step * 50_000_000 + 7_000_000,
        result_time_ns=1_700_000_000_123_456_789 + step * 50_000_000 + 12_000_000,
    )


def assert_same_step(got: StepRecord, want: StepRecord) -> None:
    assert got.step == want.step and got.time_ns == want.time_ns
    assert (got.action_time_ns, got.result_time_ns) == (want.action_time_ns, want.result_time_ns)
    assert (got.imagined is None) == (want.imagined is None)
    if want.imagined is not None:
        np.testing.assert_array_equal(got.imagined, want.imagined)
    assert sorted(got.observation) == sorted(want.observation)
    for key, value in want.observation.items():
        if isinstance(value, str):
            assert got.observation[key] == value
        else:
            # PNG is lossless and float32 lists are written exactly: equality, not closeness.
            assert got.observation[key].dtype == value.dtype
            np.testing.assert_array_equal(got.observation[key], value)
    for name in ("action_requested", "action_sent", "action_applied"):
        want_a, got_a = getattr(want, name), getattr(got, name)
        assert (got_a is None) == (want_a is None), name
        if want_a is not None:
            assert got_a.dtype == np.float32
            np.testing.assert_array_equal(got_a, want_a)
    assert got.reward == want.reward
    assert (got.terminated, got.truncated, got.success) == (want.terminated, want.truncated, want.success)
    assert got.surprise == want.surprise
    assert got.plan == want.plan
    assert want.sim_state is not None and got.sim_state is not None
    assert sorted(got.sim_state) == sorted(want.sim_state)
    for key, value in want.sim_state.items():
        np.testing.assert_array_equal(got.sim_state[key], value)


def write_episode(path: Path, steps: int, **kwargs) -> list[StepRecord]:
    records = [make_record(i) for i in range(steps)]
    attachments = {"reach.xml": b"<mujoco model='reach'/>", "config.yaml": b"run:\n  seed: 7\n"}
    with EpisodeWriter(path, METADATA, attachments, audio_sample_rate=8000, **kwargs) as writer:
        for record in records:
            writer.write(record)
    return records


def test_every_channel_round_trips(tmp_path: Path) -> None:
    path = episode_path(tmp_path / "run", 12)
    assert path == tmp_path / "run" / "episodes" / "episode_000012.mcap"
    records = write_episode(path, 9)
    episode = read_episode(path)
    assert episode.complete
    assert episode.metadata == METADATA
    assert episode.attachments == {"reach.xml": b"<mujoco model='reach'/>", "config.yaml": b"run:\n  seed: 7\n"}
    assert episode.audio_sample_rate == 8000
    assert len(episode.steps) == len(records)
    for got, want in zip(episode.steps, records):
        assert_same_step(got, want)


def test_missing_fields_stay_missing(tmp_path: Path) -> None:
    path = tmp_path / "bare.mcap"
    with EpisodeWriter(path, METADATA) as writer:
        writer.write(StepRecord(step=3, time_ns=5, observation={}, action_requested=None, action_sent=None,
                                action_applied=None, reward=None))
    (got,) = read_episode(path).steps
    # read back, the result's time is explicit: the step's one time
    assert got == StepRecord(step=3, time_ns=5, observation={}, action_requested=None, action_sent=None,
                             action_applied=None, reward=None, result_time_ns=5)
    assert got.action_source is None and got.action_taken is None


def test_the_action_taken_is_the_one_nearest_the_body() -> None:
    asked, sent, applied = (np.full(2, v, np.float32) for v in (0.9, 0.8, 0.5))
    step = StepRecord(step=0, time_ns=0, observation={}, action_requested=asked, action_sent=sent,
                      action_applied=applied, reward=None)
    assert step.action_source == "applied" and step.action_taken is applied
    step.action_applied = None
    assert step.action_source == "sent" and step.action_taken is sent
    step.action_sent = None
    assert step.action_source == "requested" and step.action_taken is asked


def test_standard_reader_sees_a_foxglove_image(tmp_path: Path) -> None:
    path = tmp_path / "fox.mcap"
    records = write_episode(path, 2)
    with path.open("rb") as file:
        reader = make_reader(file)
        summary = reader.get_summary()
        assert summary is not None and summary.statistics.message_count > 0
        images = list(reader.iter_messages(topics=[TOPIC_IMAGE]))
    assert len(images) == 2
    schema, channel, message = images[0]
    assert (schema.name, schema.encoding) == ("foxglove.CompressedImage", "jsonschema")
    assert channel.message_encoding == "json"
    payload = json.loads(message.data)
    assert payload["format"] == "png" and payload["frame_id"] == "camera"
    assert payload["timestamp"] == {"sec": 1_700_000_000, "nsec": 123_456_789}
    # The PNG is in true colour: decoded by OpenCV (BGR) and flipped, it is the RGB image written.
    bgr = cv2.imdecode(np.frombuffer(base64.b64decode(payload["data"]), np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(bgr[:, :, ::-1], records[0].observation["image"])


def test_every_truncation_reads_a_prefix_or_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "whole.mcap"
    records = [make_record(i, size=2, samples=3) for i in range(2)]
    writer = EpisodeWriter(path, METADATA, {"reach.xml": b"<mujoco/>"})
    header_end = path.stat().st_size  # everything before the first step, flushed by the constructor
    step_ends = []
    for record in records:
        writer.write(record)
        step_ends.append(path.stat().st_size)
    writer.close()
    data = path.read_bytes()
    cut_path = tmp_path / "cut.mcap"
    # Every byte where steps are; the schemas before and the summary after are sampled to keep it fast.
    cuts = {*range(0, header_end, 7), header_end - 1, *range(header_end, step_ends[-1] + 2)}
    cuts |= set(range(step_ends[-1], len(data), 7))
    for cut in sorted(cuts):
        cut_path.write_bytes(data[:cut])
        if cut < header_end:
            with pytest.raises(EpisodeError, match="cut.mcap"):
                read_episode(cut_path)
            continue
        episode = read_episode(cut_path)
        assert not episode.complete
        assert episode.metadata == METADATA
        whole = sum(cut >= end for end in step_ends)
        assert [s.step for s in episode.steps] == list(range(whole)), cut
    assert read_episode(path).complete


def kill_when_flushed(child: str, want: int, timeout_s: float = 30.0) -> None:
    """Run the Python source `child`, which prints how many steps it has flushed after every step,
    and kill it with SIGKILL once it has flushed `want`."""
    process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        assert process.stdout is not None
        while (line := process.stdout.readline()) and int(line) < want:
            assert time.monotonic() < deadline, "the writer is too slow"
        assert line, f"the writer exited early with {process.wait()}"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL


def test_killed_writer_leaves_every_flushed_step(tmp_path: Path) -> None:
    path = tmp_path / "killed.mcap"
    child = (
        "import sys, time\n"
        f"sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]\n"
        "from agent.episodes import EpisodeWriter\n"
        "from test_episodes import METADATA, make_record\n"
        f"writer = EpisodeWriter({str(path)!r}, METADATA, {{'reach.xml': b'<mujoco/>'}}, flush_every=1)\n"
        "for step in range(100_000):\n"
        "    writer.write(make_record(step))\n"
        "    print(step + 1, flush=True)\n"
        "    time.sleep(0.001)\n"
    )
    want = 25
    kill_when_flushed(child, want)
    episode = read_episode(path)
    assert not episode.complete
    assert episode.metadata == METADATA and episode.attachments == {"reach.xml": b"<mujoco/>"}
    assert len(episode.steps) >= want
    for got in episode.steps:
        assert_same_step(got, make_record(got.step))
    assert [s.step for s in episode.steps] == list(range(len(episode.steps)))


def small_record(step: int) -> StepRecord:
    return StepRecord(step=step, time_ns=step, observation={}, action_requested=None, action_sent=None,
                      action_applied=None, reward=1.0)


def test_flush_every_batches_steps(tmp_path: Path) -> None:
    path = tmp_path / "batched.mcap"
    writer = EpisodeWriter(path, METADATA, flush_every=4)
    for step in range(3):
        writer.write(small_record(step))
    assert read_episode(path).steps == []  # still in the process's buffer
    writer.write(small_record(3))
    assert len(read_episode(path).steps) == 4
    writer.close()
    writer.close()  # idempotent
    assert read_episode(path).complete


def test_corrupt_message_names_file_and_last_good_step(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.mcap"
    write_episode(path, 4)
    data = bytearray(path.read_bytes())
    # The reward message of step 2 is the third compact JSON starting {"reward": (the schemas have a space).
    starts = [i for i in range(len(data)) if data.startswith(b'{"reward":', i) and data[i + 10] != ord(" ")]
    data[starts[2]] = ord("X")
    path.write_bytes(bytes(data))
    with pytest.raises(EpisodeError, match=r"corrupt\.mcap.*after step 1"):
        read_episode(path)


def test_a_flipped_digit_in_a_complete_file_fails_its_crc(tmp_path: Path) -> None:
    """A change that keeps every record well formed (a reward 0.5 read as 0.7) is caught by the data CRC."""
    path = tmp_path / "flipped.mcap"
    write_episode(path, 4)
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data)) if data.startswith(b'{"reward":', i) and data[i + 10] != ord(" ")]
    digit = next(i for i in range(starts[2] + 10, starts[2] + 40) if chr(data[i]).isdigit())
    data[digit] = ord("7") if data[digit] != ord("7") else ord("3")
    path.write_bytes(bytes(data))
    with pytest.raises(EpisodeError, match=r"flipped\.mcap.*(CRC|crc)"):
        read_episode(path)


def test_foreign_and_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(EpisodeError, match="nothere.mcap.*not found"):
        read_episode(tmp_path / "nothere.mcap")
    text = tmp_path / "notes.mcap"
    text.write_text("these are not the bytes you are looking for\n")
    with pytest.raises(EpisodeError, match="notes.mcap.*not an MCAP file"):
        read_episode(text)
    foreign = tmp_path / "foreign.mcap"
    with foreign.open("wb") as file:
        writer = Writer(file)
        writer.start()
        schema = writer.register_schema("x", "jsonschema", b"{}")
        channel = writer.register_channel("/x", "json", schema)
        writer.add_message(channel, log_time=1, data=b"{}", publish_time=1)
        writer.finish()
    with pytest.raises(EpisodeError, match="foreign.mcap.*not an omniloop episode"):
        read_episode(foreign)


def test_writer_refuses_bad_steps_without_writing_them(tmp_path: Path) -> None:
    path = tmp_path / "refused.mcap"
    with pytest.raises(ValueError, match="lacks \\['code_version', 'episode'\\]"):
        EpisodeWriter(path, {"run": "a", "seed": "0", "env": "reach"})
    with EpisodeWriter(path, METADATA) as writer:
        writer.write(make_record(0))
        bad = make_record(1)
        bad.surprise = {"total": float("nan")}
        with pytest.raises(ValueError, match="step 1: /surprise holds NaN"):
            writer.write(bad)
        with pytest.raises(ValueError, match="step 0 comes after step 0"):
            writer.write(make_record(0))
        odd = make_record(1)
        odd.observation["image"] = np.zeros((4, 4), np.uint8)
        with pytest.raises(ValueError, match=r"step 1: image must be \(H, W, 3\) uint8"):
            writer.write(odd)
        odd.observation = {"depth": np.zeros(3)}
        with pytest.raises(ValueError, match="unknown observation keys \\['depth'\\]"):
            writer.write(odd)
        writer.write(make_record(1))
    assert [s.step for s in read_episode(path).steps] == [0, 1]
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(make_record(2))
