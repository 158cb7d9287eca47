"""LeRobot v3.0 export: the layout, columns, metadata and video read back with pyarrow and imageio; refusals."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from agent.episodes import EpisodeError, EpisodeWriter, StepRecord, read_episode
from agent.export_lerobot import export_lerobot

SIZE = 16
STATE_DIM = 4
ACTION_DIM = 2
INTERVAL_NS = 100_000_000  # 10 Hz
START_NS = 1_700_000_000_000_000_000
INSTRUCTION = "touch the red ball"
CAMERA = "observation.images.camera"


def colour(episode: int, step: int) -> tuple[int, int, int]:
    """A flat colour per frame, far from every other frame's, so a lossy video still tells them apart."""
    return (40 + 30 * step, 60 + 120 * episode, 220 - 25 * step)


def make_step(
    episode: int, step: int, *, image: tuple[int, int] | None = (SIZE, SIZE), state_dim: int = STATE_DIM,
    interval_ns: int = INTERVAL_NS, instruction: str | None = None, applied: bool = True, last: bool = False,
) -> StepRecord:
    rng = np.random.default_rng(100 * episode + step)
    observation: dict[str, np.ndarray | str] = {"proprio": rng.standard_normal(state_dim).astype(np.float32)}
    if image is not None:
        observation["image"] = np.broadcast_to(np.array(colour(episode, step), np.uint8), (*image, 3)).copy()
    if instruction is not None:
        observation["instruction"] = instruction
    action = rng.uniform(-1, 1, ACTION_DIM).astype(np.float32)
    return StepRecord(
        step=step,
        time_ns=START_NS + episode * 10**10 + step * interval_ns + 1234 * step,  # jitter, as real capture has
        observation=observation,
        action_requested=(action * 2).astype(np.float32),
        action_sent=action if not applied else (action * 3).astype(np.float32),
        action_applied=action if applied else None,
        reward=float(step) / 2,
        terminated=last and episode == 0,
        truncated=last and episode == 1,
    )


def write_episode(folder: Path, episode: int, steps: int, *, torn: bool = False,
                  metadata: dict[str, str] | None = None, **step_options: object) -> Path:
    path = folder / f"episode_{episode:06d}.mcap"
    meta = {"run": "unit", "seed": "0", "env": "reach", "code_version": "abc", "episode": str(episode)}
    writer = EpisodeWriter(path, {**meta, **(metadata or {})})
    for step in range(steps):
        writer.write(make_step(episode, step, last=step == steps - 1, **step_options))
    steps_end = path.stat().st_size
    writer.close()
    if torn:
        path.write_bytes(path.read_bytes()[:steps_end])  # the footer never made it: a killed writer
    return path


@pytest.fixture
def two_episodes(tmp_path: Path) -> Path:
    """Episode 0: 5 steps, no instruction, applied actions. Episode 1: 7 steps, an instruction, only sent
    actions, torn before its footer."""
    folder = tmp_path / "episodes"
    write_episode(folder, 0, 5)
    write_episode(folder, 1, 7, torn=True, instruction=INSTRUCTION, applied=False)
    assert not read_episode(folder / "episode_000001.mcap").complete
    return folder


def test_layout_columns_and_metadata(two_episodes: Path, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    summary = export_lerobot(two_episodes, out)

    files = {
        "data/chunk-000/file-000.parquet",
        "meta/episodes/chunk-000/file-000.parquet",
        "meta/info.json",
        "meta/stats.json",
        "meta/tasks.parquet",
        f"videos/{CAMERA}/chunk-000/file-000.mp4",
    }
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == files
    assert set(summary["files"]) == files
    assert (summary["episodes"], summary["frames"], summary["fps"]) == (2, 12, 10)
    assert summary["torn"] == ["episode_000001.mcap"] and summary["skipped_empty"] == []
    assert summary["step_gaps"] == {}
    assert summary["action_sources"] == {"applied": 5, "sent": 7}
    assert summary["tasks"] == ["reach", INSTRUCTION]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "episodes"]  # no staging folder left behind

    data = pq.read_table(out / "data/chunk-000/file-000.parquet")
    assert data.schema.equals(pa.schema([
        ("observation.state", pa.list_(pa.float32(), STATE_DIM)),
        ("action", pa.list_(pa.float32(), ACTION_DIM)),
        ("next.reward", pa.float32()),
        ("next.done", pa.bool_()),
        ("capture_time_ns", pa.int64()),
        ("timestamp", pa.float32()),
        ("frame_index", pa.int64()),
        ("episode_index", pa.int64()),
        ("index", pa.int64()),
        ("task_index", pa.int64()),
    ]))
    rows = data.to_pydict()
    assert data.num_rows == 12
    assert pc.value_counts(data["episode_index"]).to_pylist() == [
        {"values": 0, "counts": 5}, {"values": 1, "counts": 7}]
    assert rows["episode_index"] == [0] * 5 + [1] * 7
    assert rows["frame_index"] == list(range(5)) + list(range(7))
    assert rows["index"] == list(range(12))
    np.testing.assert_array_equal(rows["timestamp"], np.float32([i / 10 for i in rows["frame_index"]]))
    assert rows["task_index"] == [0] * 5 + [1] * 7
    assert rows["next.done"] == [False] * 4 + [True] + [False] * 6 + [True]
    want = [make_step(e, s, applied=e == 0, last=s == n - 1) for e, n in ((0, 5), (1, 7)) for s in range(n)]
    np.testing.assert_array_equal(rows["observation.state"], [w.observation["proprio"] for w in want])
    # The applied action where there is one (episode 0), else the sent one (episode 1), never the requested.
    np.testing.assert_array_equal(rows["action"], [w.action_applied if w.action_applied is not None
                                                   else w.action_sent for w in want])
    assert rows["next.reward"] == [w.reward for w in want]
    assert rows["capture_time_ns"] == [w.time_ns for w in want]

    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert (info["fps"], info["total_episodes"], info["total_frames"], info["total_tasks"]) == (10, 2, 12, 2)
    assert info["robot_type"] == "reach" and info["splits"] == {"train": "0:2"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert (info["chunks_size"], info["data_files_size_in_mb"], info["video_files_size_in_mb"]) == (1000, 100, 500)
    features = info["features"]
    assert {key: (ft["dtype"], ft["shape"]) for key, ft in features.items()} == {
        CAMERA: ("video", [SIZE, SIZE, 3]),
        "observation.state": ("float32", [STATE_DIM]),
        "action": ("float32", [ACTION_DIM]),
        "next.reward": ("float32", [1]),
        "next.done": ("bool", [1]),
        "capture_time_ns": ("int64", [1]),
        "timestamp": ("float32", [1]),
        "frame_index": ("int64", [1]),
        "episode_index": ("int64", [1]),
        "index": ("int64", [1]),
        "task_index": ("int64", [1]),
    }
    # Every parquet column is a declared feature, and every declared feature but the video is a column.
    assert set(data.column_names) == set(features) - {CAMERA}
    assert features[CAMERA]["names"] == ["height", "width", "channels"]
    assert features[CAMERA]["info"] == {
        "video.height": SIZE, "video.width": SIZE, "video.codec": "h264", "video.pix_fmt": "yuv420p",
        "video.is_depth_map": False, "video.fps": 10, "video.channels": 3, "has_audio": False,
    }
    assert features["action"]["names"] == ["action_0", "action_1"]

    episodes = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [(e["episode_index"], e["length"], e["dataset_from_index"], e["dataset_to_index"]) for e in episodes] == [
        (0, 5, 0, 5), (1, 7, 5, 12)]
    assert [e["tasks"] for e in episodes] == [["reach"], [INSTRUCTION]]
    assert all(e["data/chunk_index"] == e["data/file_index"] == 0 for e in episodes)
    assert all(e[f"videos/{CAMERA}/chunk_index"] == e[f"videos/{CAMERA}/file_index"] == 0 for e in episodes)
    spans = [(e[f"videos/{CAMERA}/from_timestamp"], e[f"videos/{CAMERA}/to_timestamp"]) for e in episodes]
    np.testing.assert_allclose(spans, [(0.0, 0.5), (0.5, 1.2)])
    assert [e["omniloop/complete"] for e in episodes] == [True, False]
    assert episodes[1]["stats/observation.state/count"] == [7]
    np.testing.assert_allclose(episodes[1]["stats/observation.state/max"],
                               np.max([w.observation["proprio"] for w in want[5:]], axis=0), rtol=1e-6)

    tasks = pq.read_table(out / "meta/tasks.parquet")
    assert tasks.to_pydict() == {"task_index": [0, 1], "task": ["reach", INSTRUCTION]}
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]  # pandas reads it as the index

    stats = json.loads((out / "meta/stats.json").read_text())
    assert set(stats) == set(features)
    assert all(set(s) == {"min", "max", "mean", "std", "count"} for s in stats.values())
    assert stats["index"]["count"] == [12] and stats["index"]["max"] == [11]
    states = np.array([w.observation["proprio"] for w in want], np.float64)
    np.testing.assert_allclose(stats["observation.state"]["mean"], states.mean(axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats["observation.state"]["std"], states.std(axis=0), rtol=1e-6)
    images = np.array([colour(e, s) for e, n in ((0, 5), (1, 7)) for s in range(n)], np.float64) / 255
    assert np.array(stats[CAMERA]["mean"]).shape == (3, 1, 1)
    np.testing.assert_allclose(np.ravel(stats[CAMERA]["mean"]), images.mean(axis=0))
    np.testing.assert_allclose(np.ravel(stats[CAMERA]["max"]), images.max(axis=0))

    # The video: one frame per row, in row order, so episode e's frame j is at from_timestamp + j / fps.
    video = out / f"videos/{CAMERA}/chunk-000/file-000.mp4"
    frames = iio.imread(video, plugin="FFMPEG")
    meta = iio.immeta(video, plugin="FFMPEG")
    assert frames.shape == (12, SIZE, SIZE, 3) and frames.dtype == np.uint8
    assert meta["codec"] == "h264" and meta["fps"] == 10 and meta["size"] == (SIZE, SIZE)
    for (start, _), (e, n) in zip(spans, ((0, 5), (1, 7))):
        for j in range(n):
            got = frames[round(start * 10) + j].reshape(-1, 3).mean(axis=0)
            assert np.abs(got - colour(e, j)).max() < 8, (e, j, got)  # H.264 is lossy; colours are close


def test_fps_from_control_hz_and_the_callers_override(tmp_path: Path) -> None:
    folder = tmp_path / "episodes"
    for episode in range(2):
        write_episode(folder, episode, 3, image=None, metadata={"control_hz": "25"})
    summary = export_lerobot(folder, tmp_path / "hz", task="reach the target")
    assert summary["fps"] == 25  # control_hz beats the 10 Hz of the capture times
    assert summary["tasks"] == ["reach the target"]
    info = json.loads((tmp_path / "hz/meta/info.json").read_text())
    assert info["fps"] == 25 and info["video_path"] is None and "observation.images.camera" not in info["features"]
    assert not (tmp_path / "hz/videos").exists()
    timestamps = pq.read_table(tmp_path / "hz/data/chunk-000/file-000.parquet")["timestamp"].to_pylist()
    assert timestamps == pytest.approx([0, 0.04, 0.08] * 2)
    assert export_lerobot(folder, tmp_path / "override", fps=5)["fps"] == 5


def test_a_tree_of_runs_keeps_each_file_apart(tmp_path: Path) -> None:
    """Every run names its files episode_000000.mcap, ...: the export names them by their path under the
    folder, and hidden files (macOS's ._ copies, an export's staging folder) are not episodes."""
    for run in ("run-a", "run-b"):
        write_episode(tmp_path / "runs" / run / "episodes", 0, 4, torn=run == "run-b")
    (tmp_path / "runs" / "run-a" / "episodes" / "._episode_000000.mcap").write_bytes(b"\0" * 64)
    (tmp_path / "runs" / ".staging").mkdir()
    (tmp_path / "runs" / ".staging" / "episode_000000.mcap").write_bytes(b"not an episode")
    summary = export_lerobot(tmp_path / "runs", tmp_path / "dataset")
    sources = ["run-a/episodes/episode_000000.mcap", "run-b/episodes/episode_000000.mcap"]
    assert summary["episodes"] == 2 and summary["torn"] == sources[1:]
    rows = pq.read_table(tmp_path / "dataset" / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [row["omniloop/source"] for row in rows] == sources


def test_refuses_a_folder_without_episodes(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(EpisodeError, match="empty: no episode files"):
        export_lerobot(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_an_out_folder_that_is_not_empty(two_episodes: Path, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="taken: exists and is not empty"):
        export_lerobot(two_episodes, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty_out"
    empty.mkdir()
    assert export_lerobot(two_episodes, empty)["episodes"] == 2  # an empty folder is fine


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"interval_ns": INTERVAL_NS // 2},
         r"fps 20 \(median step interval\), but episode_000000.mcap has fps 10 \(median step interval\); pass fps"),
        ({"state_dim": STATE_DIM + 1},
         r"observation.state has shape \(5,\), but in episode_000000.mcap it has shape \(4,\)"),
        ({"image": None}, "observation.images.camera is absent, but in episode_000000.mcap it has shape"),
        ({"image": (SIZE, SIZE + 2)}, r"observation.images.camera has shape \(16, 18, 3\)"),
        ({"image": (SIZE - 1, SIZE)}, "images are 15x16; H.264 in yuv420p needs an even height and width"),
    ],
    ids=["fps", "state-shape", "no-image", "image-shape", "odd-image"],
)
def test_refuses_episodes_that_disagree_naming_the_file(
    tmp_path: Path, second: dict[str, object], message: str
) -> None:
    folder = tmp_path / "episodes"
    write_episode(folder, 0, 4)
    write_episode(folder, 1, 4, **second)
    with pytest.raises(ValueError, match=message) as error:
        export_lerobot(folder, tmp_path / "out")
    assert "episode_000001.mcap" in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episodes"]  # nothing half-written is left


def test_refuses_a_feature_on_some_steps_only(tmp_path: Path) -> None:
    folder = tmp_path / "episodes"
    path = folder / "episode_000000.mcap"
    with EpisodeWriter(path, {"run": "u", "seed": "0", "env": "reach", "code_version": "a", "episode": "0"}) as w:
        w.write(make_step(0, 0, image=None))
        w.write(make_step(0, 1, image=None))
        record = make_step(0, 2, image=None)
        record.reward = None
        w.write(record)
    with pytest.raises(ValueError, match="episode_000000.mcap: reward is missing on step 2"):
        export_lerobot(folder, tmp_path / "out")


def test_skips_episodes_without_steps_reports_gaps_and_names_unreadable_files(tmp_path: Path) -> None:
    folder = tmp_path / "episodes"
    write_episode(folder, 0, 3, image=None)
    write_episode(folder, 1, 0)  # the run stopped before its first step
    with EpisodeWriter(folder / "episode_000002.mcap", {"run": "u", "seed": "0", "env": "reach",
                                                        "code_version": "a", "episode": "2"}) as writer:
        for step in (0, 1, 2, 5):  # the recorder dropped steps 3 and 4
            writer.write(make_step(2, step, image=None))
    summary = export_lerobot(folder, tmp_path / "out")
    assert (summary["episodes"], summary["frames"], summary["skipped_empty"]) == (2, 7, ["episode_000001.mcap"])
    assert summary["step_gaps"] == {"episode_000002.mcap": 2}
    rows = pq.read_table(tmp_path / "out/data/chunk-000/file-000.parquet").to_pydict()
    assert rows["frame_index"] == [0, 1, 2, 0, 1, 2, 3]  # frames stay contiguous; the real times show the gap
    assert rows["capture_time_ns"][3:] == [make_step(2, step, image=None).time_ns for step in (0, 1, 2, 5)]
    (folder / "episode_000002.mcap").unlink()
    (folder / "episode_000002.mcap").write_bytes(b"not an mcap file")
    with pytest.raises(EpisodeError, match="episode_000002.mcap: not an MCAP file"):
        export_lerobot(folder, tmp_path / "again")
    assert not (tmp_path / "again").exists()
