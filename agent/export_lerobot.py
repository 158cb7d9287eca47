"""Export recorded episodes to a LeRobot dataset (layout v3.0), so other people's policies train on our data.

This module owns the mapping from our episode files (`agent.episodes`) to LeRobot features, and the
files of the v3.0 layout, all under `out`:

  meta/info.json                                        fps, totals, path templates, features
  meta/stats.json                                       min, max, mean, std, count per feature
  meta/tasks.parquet                                    task (the index) -> task_index
  meta/episodes/chunk-000/file-000.parquet              one row per episode: where its rows and
                                                        frames are, its tasks and stats
  data/chunk-000/file-000.parquet                       one row per step, one row group per episode
  videos/observation.images.camera/chunk-000/file-000.mp4   every episode's frames, one after another

Step fields -> features:
  observation image (H, W, 3) uint8  -> observation.images.camera  video: H.264, yuv420p (not in parquet)
  observation proprio (P,)           -> observation.state          float32 (P,)
  action applied, else sent, else requested -> action              float32 (A,)
  reward                             -> next.reward                float32
  terminated or truncated            -> next.done                  bool
  success                            -> next.success               bool (when every step has one)
  time_ns (real capture time)        -> capture_time_ns            int64; our own feature
  instruction (else `task`, else the env name) -> task_index       into meta/tasks.parquet
Audio, surprise, plan traces and simulator states have no LeRobot feature and are not exported.

LeRobot's own columns follow its conventions: timestamp = frame_index / fps (float32), frame_index
counts the steps of an episode from 0, index counts the rows of the dataset from 0.

Every file goes into one chunk and one file: LeRobot's size limits (data_files_size_in_mb,
video_files_size_in_mb) only tell its writer when to start a new file, and its reader follows the
per-episode chunk and file indices, so one file of each is a layout it reads.

Nothing is written to `out` until every episode has been read and checked: the dataset is built in a
hidden folder beside `out`, renamed into place at the end, and removed if anything fails.
"""

from __future__ import annotations

import json
import secrets
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imageio.v2 as imageio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from agent.episodes import ACTION_SOURCES, Episode, StepRecord, episode_files, read_episode

CODEBASE_VERSION = "v3.0"
# LeRobot's defaults for a new dataset (lerobot/datasets/utils.py); recorded in info.json as they are.
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 500
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
CHUNK_INDEX = 0
FILE_INDEX = 0

CAMERA_KEY = "observation.images.camera"
STATE_KEY = "observation.state"
ACTION_KEY = "action"
REWARD_KEY = "next.reward"
DONE_KEY = "next.done"
SUCCESS_KEY = "next.success"
CAPTURE_KEY = "capture_time_ns"  # not under "observation.": LeRobot would feed it to policies as state
INDEX_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")

VIDEO_CODEC = "libx264"
VIDEO_CODEC_NAME = "h264"  # what a decoder reports for VIDEO_CODEC, as LeRobot's info.json records it
PIXEL_FORMAT = "yuv420p"  # what browsers and LeRobot's decoders play; needs even heights and widths
GOP = 2  # a keyframe every 2 frames, as LeRobot encodes: training reads frames in random order
CRF = 18  # near-lossless: small camera images lose detail fast at x264's default 23


@dataclass
class _Columns:
    """One episode's steps as arrays, one per feature; a feature the episode lacks is None."""

    path: Path
    source: str  # the file's path under the exported folder: in a tree of runs, names repeat
    fps: int
    fps_source: str  # where fps came from, for error messages
    env: str
    complete: bool
    images: np.ndarray | None  # (n, H, W, 3) uint8
    state: np.ndarray | None  # (n, P) float32
    action: np.ndarray | None  # (n, A) float32
    reward: np.ndarray | None  # (n,) float32
    success: np.ndarray | None  # (n,) bool
    done: np.ndarray  # (n,) bool
    capture_ns: np.ndarray  # (n,) int64
    tasks: list[str]  # one per step
    action_sources: dict[str, int] = field(default_factory=dict)
    missing_steps: int = 0  # step indices skipped between the first and last whole step (dropped by the recorder)

    def __len__(self) -> int:
        return len(self.done)

    def shapes(self) -> dict[str, tuple[int, ...] | None]:
        """Each feature's per-frame shape, None where absent: what every episode of a dataset must share."""
        per_frame = {
            CAMERA_KEY: self.images,
            STATE_KEY: self.state,
            ACTION_KEY: self.action,
            REWARD_KEY: self.reward,
            SUCCESS_KEY: self.success,
        }
        return {key: None if array is None else tuple(array.shape[1:]) for key, array in per_frame.items()}


# ---------------------------------------------------------------------------------------------- the export


def export_lerobot(
    episodes_dir: Path, out: Path, task: str | None = None, *, fps: int | None = None
) -> dict[str, Any]:
    """Write every `*.mcap` episode under `episodes_dir` (a run folder, its episodes/, or a tree of
    runs; sorted by path) as a LeRobot v3.0 dataset at `out`.

    `task` names the task of steps without an instruction (default: the episode's env name); `fps`
    overrides the frame rate, which is otherwise the metadata's `control_hz` or, without it, the median
    step interval of each episode. Torn episodes are exported with their whole steps and listed under
    "torn"; episodes without a whole step are skipped and listed under "skipped_empty". Steps the
    recorder dropped leave no frame: the frames around them become neighbours, one 1/fps apart, and
    "step_gaps" counts the dropped steps of each such file.

    Raises ValueError, naming the offending file or folder, when `out` exists and is not an empty
    folder, when episodes disagree on fps or on feature shapes, when a feature is on some steps of an
    episode only, and when an image has an odd height or width.
    A missing folder, one without episodes, and unreadable episode files raise
    `agent.episodes.EpisodeError`, which names the folder or the file.
    """
    episodes_dir, out = Path(episodes_dir), Path(out)
    paths = episode_files(episodes_dir)
    _check_out(out)
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, int) or fps <= 0):
        raise ValueError(f"fps must be a positive integer, got {fps!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Built beside `out`, on the same file system, so that the final rename is atomic; made with mkdir
    # (not tempfile, whose folders are private) so the dataset gets the usual permissions.
    staging = out.parent / f".{out.name}.{secrets.token_hex(4)}.partial"
    staging.mkdir()
    try:
        summary = _write_dataset(paths, episodes_dir, staging, task, fps)
        if out.exists():
            out.rmdir()  # checked empty above
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary["out"] = str(out)
    return summary


def _check_out(out: Path) -> None:
    if out.is_dir():
        if any(out.iterdir()):
            raise ValueError(f"{out}: exists and is not empty; export into a new or empty folder")
    elif out.exists():
        raise ValueError(f"{out}: exists and is not a folder")


def _write_dataset(paths: list[Path], base: Path, root: Path, task: str | None,
                   fps_override: int | None) -> dict[str, Any]:
    """Read, check and write every episode (found under `base`) into `root`; returns the summary."""
    writer: _DatasetWriter | None = None
    skipped: list[str] = []
    try:
        for path in paths:
            episode = read_episode(path)
            source = path.relative_to(base).as_posix()
            if not episode.steps:
                skipped.append(source)  # a file torn before its first whole step holds nothing to train on
                continue
            columns = _episode_columns(episode, path, source, task, fps_override)
            if writer is None:
                writer = _DatasetWriter(root, columns)
            _check_agrees(columns, writer.first)
            writer.add(columns)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError(f"{base}: no episode holds a whole step; nothing to export")
    summary = writer.write_meta()
    summary["skipped_empty"] = skipped
    summary["files"] = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return summary


class _DatasetWriter:
    """One dataset being written: the data parquet and the video stay open while episodes are added, and
    what meta/ needs is gathered on the way. The first episode fixes the features."""

    def __init__(self, root: Path, first: _Columns):
        self.root = root
        self.first = first
        self.task_index: dict[str, int] = {}
        self.episode_rows: list[dict[str, Any]] = []
        self.stats: list[dict[str, dict[str, np.ndarray]]] = []
        self.torn: list[str] = []
        self.gaps: dict[str, int] = {}
        self.envs: set[str] = set()
        self.sources = dict.fromkeys(ACTION_SOURCES, 0)
        self.frames = 0
        data_file = root / DATA_PATH.format(chunk_index=CHUNK_INDEX, file_index=FILE_INDEX)
        data_file.parent.mkdir(parents=True)
        self.data = pq.ParquetWriter(data_file, _data_schema(first), compression="snappy")
        self.video: Any = None  # an imageio writer, which has no public type to name
        if first.images is not None:
            video_file = VIDEO_PATH.format(video_key=CAMERA_KEY, chunk_index=CHUNK_INDEX, file_index=FILE_INDEX)
            self.video = _open_video(root / video_file, first.fps)

    def add(self, columns: _Columns) -> None:
        """Append an episode (checked to agree with the first) to the data, the video and the meta rows."""
        for name in columns.tasks:
            self.task_index.setdefault(name, len(self.task_index))
        episode_index = len(self.episode_rows)
        table = _data_table(columns, episode_index, self.frames, self.task_index)
        self.data.write_table(table)  # one row group per episode, as LeRobot writes them
        if self.video is not None:
            for image in columns.images:
                self.video.append_data(image)
        episode_stats = _episode_stats(columns, table)
        self.stats.append(episode_stats)
        self.episode_rows.append(_episode_row(columns, episode_index, self.frames, episode_stats))
        self.frames += len(columns)
        self.envs.add(columns.env)
        for source, count in columns.action_sources.items():
            self.sources[source] += count
        if not columns.complete:
            self.torn.append(columns.source)
        if columns.missing_steps:
            self.gaps[columns.source] = columns.missing_steps

    def close(self) -> None:
        self.data.close()
        if self.video is not None:
            self.video.close()

    def write_meta(self) -> dict[str, Any]:
        """Write meta/ (info, stats, tasks, episodes); returns the summary of the dataset."""
        episodes = len(self.episode_rows)
        features = _features(self.first)
        info = _info(self.first, features, episodes, self.frames, len(self.task_index), self.envs)
        _write_json(self.root / INFO_PATH, info)
        _write_json(self.root / STATS_PATH, _to_lists(_aggregate(self.stats)))
        _write_tasks(self.root / TASKS_PATH, self.task_index)
        episodes_file = self.root / EPISODES_PATH.format(chunk_index=CHUNK_INDEX, file_index=FILE_INDEX)
        episodes_file.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.episode_rows), episodes_file, compression="snappy")
        return {
            "episodes": episodes,
            "frames": self.frames,
            "fps": self.first.fps,
            "features": {key: {"dtype": ft["dtype"], "shape": list(ft["shape"])} for key, ft in features.items()},
            "tasks": list(self.task_index),
            "torn": self.torn,
            "step_gaps": self.gaps,
            "action_sources": {source: count for source, count in self.sources.items() if count},
        }


# ---------------------------------------------------------------------------------------------- reading


def _episode_columns(episode: Episode, path: Path, source: str, task: str | None,
                     fps_override: int | None) -> _Columns:
    """An episode's whole steps as per-feature arrays, checked for shape and for features on some steps only."""
    steps = episode.steps
    images = _stack(path, steps, "image", [s.observation.get("image") for s in steps], np.uint8)
    if images is not None:
        _check_images(images, path)
    state = _stack(path, steps, "proprio", [s.observation.get("proprio") for s in steps], np.float32)
    actions, sources = _actions(steps)
    action = _stack(path, steps, "action", actions, np.float32)
    reward = _stack(path, steps, "reward", [s.reward for s in steps], np.float32)
    success = _stack(path, steps, "success", [s.success for s in steps], np.bool_)
    env = episode.metadata.get("env", "")
    fps, fps_source = _episode_fps(episode, path, fps_override)
    return _Columns(
        path=path,
        source=source,
        fps=fps,
        fps_source=fps_source,
        env=env,
        complete=episode.complete,
        images=images,
        state=state,
        action=action,
        reward=reward,
        success=success,
        done=np.array([s.terminated or s.truncated for s in steps], np.bool_),
        capture_ns=np.array([s.time_ns for s in steps], np.int64),
        tasks=_step_tasks(steps, task if task is not None else env),
        action_sources=sources,
        missing_steps=steps[-1].step - steps[0].step + 1 - len(steps),
    )


def _stack(path: Path, steps: Sequence[StepRecord], name: str, values: list[Any], dtype: type) -> np.ndarray | None:
    """Per-step values -> one (n, ...) array; None when no step has one, an error when only some do."""
    missing = [step.step for step, value in zip(steps, values) if value is None]
    if len(missing) == len(values):
        return None
    if missing:
        raise ValueError(
            f"{path}: {name} is missing on step {missing[0]} ({len(missing)} of {len(values)} steps) but present "
            "on others; a LeRobot feature is on every frame"
        )
    arrays = [np.asarray(value) for value in values]
    for step, array in zip(steps, arrays):
        if array.shape != arrays[0].shape:
            raise ValueError(
                f"{path}: {name} of step {step.step} has shape {array.shape}, "
                f"step {steps[0].step} had {arrays[0].shape}"
            )
    return np.stack(arrays).astype(dtype, copy=False)


def _check_images(images: np.ndarray, path: Path) -> None:
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"{path}: images must be (H, W, 3), got {images.shape[1:]}")
    height, width = images.shape[1:3]
    if height % 2 or width % 2:
        # yuv420p keeps colour at half resolution in both directions, so x264 takes even sizes only; resizing
        # here would change the very pixels a policy learns from, so the recording has to change instead.
        raise ValueError(
            f"{path}: images are {height}x{width}; H.264 in {PIXEL_FORMAT} needs an even height and width, "
            "so crop or pad the camera rather than have the export resize it"
        )


def _actions(steps: Sequence[StepRecord]) -> tuple[list[np.ndarray | None], dict[str, int]]:
    """The action that reached the body: applied, else sent, else requested; and how often each was used."""
    sources = dict.fromkeys(ACTION_SOURCES, 0)
    for step in steps:
        if (source := step.action_source) is not None:
            sources[source] += 1
    return [step.action_taken for step in steps], sources


def _episode_fps(episode: Episode, path: Path, override: int | None) -> tuple[int, str]:
    """The caller's fps, else the metadata's control_hz, else the median step interval, as a whole number;
    and which of the three it is."""
    if override is not None:
        return override, "given"
    control_hz = episode.metadata.get("control_hz")
    if control_hz is not None:
        try:
            hz = float(control_hz)
        except ValueError:
            raise ValueError(f"{path}: metadata control_hz {control_hz!r} is not a number") from None
        if not hz > 0 or abs(hz - round(hz)) > 1e-6:
            # LeRobot's fps is an integer and timestamps are frame_index / fps: a rounded rate would drift.
            raise ValueError(f"{path}: control_hz {control_hz} is not a positive whole number; pass fps to override")
        return round(hz), "control_hz"
    times = np.array([step.time_ns for step in episode.steps], np.int64)
    if len(times) < 2:
        raise ValueError(f"{path}: one step and no control_hz in its metadata; pass fps to say the frame rate")
    interval_ns = statistics.median(np.diff(times).tolist())
    fps = round(1e9 / interval_ns) if interval_ns > 0 else 0
    if fps <= 0:
        raise ValueError(f"{path}: median step interval {interval_ns} ns gives no frame rate; pass fps to override")
    return fps, "median step interval"


def _step_tasks(steps: Sequence[StepRecord], default: str) -> list[str]:
    """Each step's task: the latest instruction so far (it holds until replaced), else `default`."""
    tasks: list[str] = []
    current = default
    for step in steps:
        instruction = step.observation.get("instruction")
        if isinstance(instruction, str) and instruction:
            current = instruction
        tasks.append(current)
    return tasks


def _check_agrees(columns: _Columns, first: _Columns) -> None:
    """A dataset has one fps and one shape per feature; name the episode that breaks it."""
    if columns.fps != first.fps:
        # A simulation that runs faster than real time has capture intervals that say little about its rate.
        raise ValueError(
            f"{columns.path}: fps {columns.fps} ({columns.fps_source}), but {first.path.name} has fps {first.fps} "
            f"({first.fps_source}); pass fps to export them at one rate"
        )
    want, got = first.shapes(), columns.shapes()
    for key in want:
        if got[key] != want[key]:
            raise ValueError(
                f"{columns.path}: {key} {_shape_text(got[key])}, but in {first.path.name} it {_shape_text(want[key])}"
            )


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "is absent" if shape is None else f"has shape {shape}"


# ---------------------------------------------------------------------------------------------- data


def _data_schema(first: _Columns) -> pa.Schema:
    """The parquet columns: vectors as fixed-size lists (LeRobot's features of shape (n,)), scalars plain."""
    fields = []
    if first.state is not None:
        fields.append(pa.field(STATE_KEY, pa.list_(pa.float32(), first.state.shape[1])))
    if first.action is not None:
        fields.append(pa.field(ACTION_KEY, pa.list_(pa.float32(), first.action.shape[1])))
    if first.reward is not None:
        fields.append(pa.field(REWARD_KEY, pa.float32()))
    fields.append(pa.field(DONE_KEY, pa.bool_()))
    if first.success is not None:
        fields.append(pa.field(SUCCESS_KEY, pa.bool_()))
    fields.append(pa.field(CAPTURE_KEY, pa.int64()))
    fields.append(pa.field("timestamp", pa.float32()))
    fields.extend(pa.field(key, pa.int64()) for key in INDEX_KEYS[1:])
    return pa.schema(fields)


def _data_table(columns: _Columns, episode_index: int, start: int, task_index: dict[str, int]) -> pa.Table:
    """One episode's rows; `start` is the dataset index of its first row."""
    n = len(columns)
    frame_index = np.arange(n, dtype=np.int64)
    arrays: dict[str, pa.Array] = {}
    if columns.state is not None:
        arrays[STATE_KEY] = _fixed_lists(columns.state)
    if columns.action is not None:
        arrays[ACTION_KEY] = _fixed_lists(columns.action)
    if columns.reward is not None:
        arrays[REWARD_KEY] = pa.array(columns.reward, pa.float32())
    arrays[DONE_KEY] = pa.array(columns.done, pa.bool_())
    if columns.success is not None:
        arrays[SUCCESS_KEY] = pa.array(columns.success, pa.bool_())
    arrays[CAPTURE_KEY] = pa.array(columns.capture_ns, pa.int64())
    arrays["timestamp"] = pa.array((frame_index / columns.fps).astype(np.float32), pa.float32())
    arrays["frame_index"] = pa.array(frame_index, pa.int64())
    arrays["episode_index"] = pa.array(np.full(n, episode_index, np.int64), pa.int64())
    arrays["index"] = pa.array(start + frame_index, pa.int64())
    arrays["task_index"] = pa.array(np.array([task_index[t] for t in columns.tasks], np.int64), pa.int64())
    return pa.table(arrays)


def _fixed_lists(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """(n, d) float32 -> n fixed-size lists of d float32."""
    flat = pa.array(np.ascontiguousarray(matrix, np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])


def _open_video(path: Path, fps: int) -> Any:
    """An imageio writer of H.264 frames at `fps`; every episode's frames go into it in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return imageio.get_writer(
        path,
        format="FFMPEG",
        mode="I",
        fps=fps,
        codec=VIDEO_CODEC,
        quality=None,  # rate control is the CRF below
        pixelformat=PIXEL_FORMAT,
        macro_block_size=1,  # sizes are checked even; any other value would let imageio resize frames
        ffmpeg_log_level="error",
        output_params=["-g", str(GOP), "-crf", str(CRF), "-movflags", "+faststart"],
    )


# ---------------------------------------------------------------------------------------------- meta


def _features(first: _Columns) -> dict[str, dict[str, Any]]:
    """info.json's features: dtype, shape and names of every column, and of the video with its encoding."""
    fps = first.fps
    features: dict[str, dict[str, Any]] = {}
    if first.images is not None:
        height, width, channels = first.images.shape[1:]
        features[CAMERA_KEY] = {
            "dtype": "video",
            "shape": [height, width, channels],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": height,
                "video.width": width,
                "video.codec": VIDEO_CODEC_NAME,
                "video.pix_fmt": PIXEL_FORMAT,
                "video.is_depth_map": False,
                "video.fps": fps,
                "video.channels": channels,
                "has_audio": False,
            },
        }
    if first.state is not None:
        dim = first.state.shape[1]
        features[STATE_KEY] = _feature("float32", [dim], [f"proprio_{i}" for i in range(dim)], fps)
    if first.action is not None:
        dim = first.action.shape[1]
        features[ACTION_KEY] = _feature("float32", [dim], [f"action_{i}" for i in range(dim)], fps)
    if first.reward is not None:
        features[REWARD_KEY] = _feature("float32", [1], None, fps)
    features[DONE_KEY] = _feature("bool", [1], None, fps)
    if first.success is not None:
        features[SUCCESS_KEY] = _feature("bool", [1], None, fps)
    features[CAPTURE_KEY] = _feature("int64", [1], None, fps)
    features["timestamp"] = _feature("float32", [1], None, fps)
    for key in INDEX_KEYS[1:]:
        features[key] = _feature("int64", [1], None, fps)
    return features


def _feature(dtype: str, shape: list[int], names: list[str] | None, fps: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "names": names, "fps": fps}


def _info(
    first: _Columns, features: dict[str, dict[str, Any]], episodes: int, frames: int, tasks: int, envs: set[str]
) -> dict[str, Any]:
    return {
        "codebase_version": CODEBASE_VERSION,
        # LeRobot names the robot model here; ours is the env, when every episode shares one.
        "robot_type": next(iter(envs)) if len(envs) == 1 else None,
        "total_episodes": episodes,
        "total_frames": frames,
        "total_tasks": tasks,
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
        "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB,
        "fps": first.fps,
        "splits": {"train": f"0:{episodes}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if first.images is not None else None,
        "features": features,
    }


def _episode_row(
    columns: _Columns, episode_index: int, start: int, stats: dict[str, dict[str, np.ndarray]]
) -> dict[str, Any]:
    """One row of meta/episodes: where the episode's rows and frames are, its tasks, stats and source."""
    n = len(columns)
    row: dict[str, Any] = {
        "episode_index": episode_index,
        "tasks": list(dict.fromkeys(columns.tasks)),
        "length": n,
        "data/chunk_index": CHUNK_INDEX,
        "data/file_index": FILE_INDEX,
        "dataset_from_index": start,
        "dataset_to_index": start + n,
    }
    if columns.images is not None:
        # Every episode has frames, so an episode's first frame in the shared video is its first row.
        row[f"videos/{CAMERA_KEY}/chunk_index"] = CHUNK_INDEX
        row[f"videos/{CAMERA_KEY}/file_index"] = FILE_INDEX
        row[f"videos/{CAMERA_KEY}/from_timestamp"] = start / columns.fps
        row[f"videos/{CAMERA_KEY}/to_timestamp"] = (start + n) / columns.fps
    row["meta/episodes/chunk_index"] = CHUNK_INDEX
    row["meta/episodes/file_index"] = FILE_INDEX
    for key, feature_stats in stats.items():
        for name, value in feature_stats.items():
            row[f"stats/{key}/{name}"] = value.tolist()
    # Ours, beside LeRobot's: which file the episode came from, and whether it was torn.
    row["omniloop/source"] = columns.source
    row["omniloop/complete"] = columns.complete
    return row


def _write_tasks(path: Path, task_index: dict[str, int]) -> None:
    """meta/tasks.parquet: LeRobot reads it with pandas and looks tasks up in the index named "task".

    The pandas metadata below is what pandas itself writes for such a frame (see "Storing pandas
    DataFrame objects in Apache Parquet format" in pandas' developer docs); writing it with pyarrow
    spares the project a pandas dependency.
    """
    table = pa.table({
        "task_index": pa.array(list(task_index.values()), pa.int64()),
        "task": pa.array(list(task_index), pa.string()),
    })
    pandas_metadata = {
        "index_columns": ["task"],
        "column_indexes": [
            {"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
             "metadata": {"encoding": "UTF-8"}},
        ],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
    }
    table = table.replace_schema_metadata({"pandas": json.dumps(pandas_metadata)})
    pq.write_table(table, path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------- stats


def _episode_stats(columns: _Columns, table: pa.Table) -> dict[str, dict[str, np.ndarray]]:
    """LeRobot's per-episode stats: every numeric column over the episode's frames, and the video per channel."""
    stats: dict[str, dict[str, np.ndarray]] = {}
    if columns.images is not None:
        stats[CAMERA_KEY] = _image_stats(columns.images)
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(column.type):
            values = column.flatten().to_numpy().reshape(len(column), column.type.list_size)
        else:
            values = column.to_numpy(zero_copy_only=False).reshape(-1, 1)
        stats[name] = _vector_stats(values.astype(np.float64))  # bools count as 0 and 1
    return stats


def _vector_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """(n, d) -> min, max, mean, std of shape (d,) and count of shape (1,)."""
    return {
        "min": values.min(axis=0),
        "max": values.max(axis=0),
        "mean": values.mean(axis=0),
        "std": values.std(axis=0),
        "count": np.array([len(values)], np.int64),
    }


def _image_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    """(n, H, W, 3) uint8 -> per-channel stats in [0, 1] of shape (3, 1, 1), LeRobot's shape for images."""
    axes = (0, 1, 2)
    per_channel = {
        "min": images.min(axis=axes) / 255.0,
        "max": images.max(axis=axes) / 255.0,
        "mean": images.mean(axis=axes, dtype=np.float64) / 255.0,
        "std": images.std(axis=axes, dtype=np.float64) / 255.0,
    }
    stats = {name: value.reshape(3, 1, 1) for name, value in per_channel.items()}
    stats["count"] = np.array([len(images)], np.int64)
    return stats


def _aggregate(episodes: list[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """Dataset stats from episode stats: count-weighted mean, pooled variance (as LeRobot aggregates)."""
    aggregated: dict[str, dict[str, np.ndarray]] = {}
    for key in episodes[0]:
        parts = [episode[key] for episode in episodes]
        counts = np.array([part["count"][0] for part in parts], np.float64)
        means = np.stack([part["mean"] for part in parts])
        variances = np.stack([part["std"] ** 2 for part in parts])
        weights = counts.reshape(-1, *([1] * (means.ndim - 1))) / counts.sum()
        mean = (weights * means).sum(axis=0)
        variance = (weights * (variances + (means - mean) ** 2)).sum(axis=0)
        aggregated[key] = {
            "min": np.min(np.stack([part["min"] for part in parts]), axis=0),
            "max": np.max(np.stack([part["max"] for part in parts]), axis=0),
            "mean": mean,
            "std": np.sqrt(variance),
            "count": np.array([int(counts.sum())], np.int64),
        }
    return aggregated


def _to_lists(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {key: {name: value.tolist() for name, value in feature.items()} for key, feature in stats.items()}
