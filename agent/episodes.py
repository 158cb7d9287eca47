"""Episode recording: one MCAP file per episode, readable by Foxglove and `mcap`, and after a crash.

Layout of a file (`runs/<name>/episodes/episode_000123.mcap`):

- header, then every schema and channel, the attachments (MJCF, resolved config) and the metadata
  record `omniloop.episode` (run, seed, env, code_version, episode), all flushed before step 0;
- per step, one JSON message on each channel that has data, all with the MCAP `sequence` set to the
  step index. Indices count the agent's steps; a gap marks steps that are not in the file (dropped
  by a recorder that fell behind, or held by a robot on a stale observation), so no transition
  may be taken across it. After the last step comes the episode's final observation, the one its
  last action led to: a record whose `/reward` says `"final": true` and that has no action. `log_time` is the real time of what the message holds: the observation's capture
  (camera, proprio, audio, instruction, simulator state), the action's sending (action, plan), and
  the step's result coming back (surprise, reward). `/reward` is always written, and written last:
  it closes the step, so a reader knows that a step is whole;
- at the end, the metadata record `omniloop.recording` (steps written, steps dropped, and why the
  recording stopped early, if it did) from the recorder (`agent/recorder.py`), then the summary and
  footer.

Messages are not chunked: every record goes straight to the file, which is flushed every
`flush_every` steps. A process killed mid-episode leaves a file without footer whose steps are whole
up to the last flush; `read_episode` reads them and stops cleanly at the torn record.

Channels, all JSON with JSON-Schema schemas:
  /camera/image  foxglove.CompressedImage  {timestamp {sec, nsec}, frame_id, data (base64 PNG), format}
  /imagined/image foxglove.CompressedImage what the world model pictured for this observation
  /proprio       omniloop.Proprio          {values: [P floats]}
  /audio         omniloop.Audio            {sample_rate, samples: [N floats]}
  /instruction   omniloop.Instruction      {text}
  /action        omniloop.Action           {requested, sent, applied: [A floats] or null}
  /reward        omniloop.Reward           {reward: float or null, terminated, truncated, success}
  /surprise      omniloop.Surprise         the caller's dict, e.g. {total, latent, reward}
  /plan          omniloop.PlanTrace        the caller's dict, e.g. {iterations, best_return, ...}
  /sim/state     omniloop.SimState         {time, qpos, qvel, act}

JSON has no NaN or infinity; a step holding one is refused with a ValueError that names the step
and channel, rather than written as a file that standard JSON readers reject.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np
from mcap.exceptions import EndOfFile, InvalidMagic, McapError
from mcap.records import Attachment, Channel, DataEnd, Footer, Message, Metadata, Schema
from mcap.stream_reader import StreamReader
from mcap.writer import CompressionType, IndexType, Writer

from agent.plain_json import json_default

FORMAT = "omniloop.episode/1"  # the MCAP header's `library` field
METADATA_NAME = "omniloop.episode"
REQUIRED_METADATA = ("run", "seed", "env", "code_version", "episode")  # optional: objective, control_hz
RECORDING_METADATA = "omniloop.recording"  # written at the end: steps, dropped_steps, failure
OBSERVATION_KEYS = ("image", "proprio", "audio", "instruction")
# a step's actions, from the one nearest the body: what it applied, what was sent, what the agent asked
ACTION_SOURCES = ("applied", "sent", "requested")

TOPIC_IMAGE = "/camera/image"
TOPIC_IMAGINED = "/imagined/image"
TOPIC_PROPRIO = "/proprio"
TOPIC_AUDIO = "/audio"
TOPIC_INSTRUCTION = "/instruction"
TOPIC_ACTION = "/action"
TOPIC_REWARD = "/reward"
TOPIC_SURPRISE = "/surprise"
TOPIC_PLAN = "/plan"
TOPIC_SIM_STATE = "/sim/state"
CAMERA_FRAME = "camera"
IMAGINED_FRAME = "imagined"

_NUMBER = {"type": "number"}
_NUMBERS = {"type": "array", "items": _NUMBER}
_NUMBERS_OR_NULL = {"type": ["array", "null"], "items": _NUMBER}

# Foxglove's CompressedImage, so that common viewers show the camera and the imagination as images.
_COMPRESSED_IMAGE: dict[str, Any] = {
    "title": "foxglove.CompressedImage",
    "description": "A compressed image",
    "type": "object",
    "properties": {
        "timestamp": {
            "type": "object",
            "title": "time",
            "properties": {
                "sec": {"type": "integer", "minimum": 0},
                "nsec": {"type": "integer", "minimum": 0, "maximum": 999999999},
            },
        },
        "frame_id": {"type": "string"},
        "data": {"type": "string", "contentEncoding": "base64"},
        "format": {"type": "string"},
    },
}

# topic -> (schema name, JSON Schema); registered in this order, so channel ids are stable. A topic
# added later goes at the end, so that older files keep their ids.
SCHEMAS: dict[str, tuple[str, dict[str, Any]]] = {
    TOPIC_IMAGE: ("foxglove.CompressedImage", _COMPRESSED_IMAGE),
    TOPIC_PROPRIO: ("omniloop.Proprio", {"type": "object", "properties": {"values": _NUMBERS}}),
    TOPIC_AUDIO: (
        "omniloop.Audio",
        {"type": "object", "properties": {"sample_rate": {"type": "integer"}, "samples": _NUMBERS}},
    ),
    TOPIC_INSTRUCTION: ("omniloop.Instruction", {"type": "object", "properties": {"text": {"type": "string"}}}),
    TOPIC_ACTION: (
        "omniloop.Action",
        {
            "type": "object",
            "properties": {"requested": _NUMBERS_OR_NULL, "sent": _NUMBERS_OR_NULL, "applied": _NUMBERS_OR_NULL},
        },
    ),
    TOPIC_REWARD: (
        "omniloop.Reward",
        {
            "type": "object",
            "properties": {
                "reward": {"type": ["number", "null"]},
                "final": {"type": "boolean"},
                "terminated": {"type": "boolean"},
                "truncated": {"type": "boolean"},
                "success": {"type": ["boolean", "null"]},
            },
        },
    ),
    TOPIC_SURPRISE: (
        "omniloop.Surprise",
        {
            "type": "object",
            "properties": {"total": _NUMBER, "latent": _NUMBER, "reward": _NUMBER},
            "additionalProperties": _NUMBER,
        },
    ),
    TOPIC_PLAN: (
        "omniloop.PlanTrace",
        {
            "type": "object",
            "properties": {
                "iterations": {"type": "integer"},
                "best_return": _NUMBER,
                "mean_return": _NUMBER,
                "think_ms": _NUMBER,
            },
            "additionalProperties": True,
        },
    ),
    TOPIC_SIM_STATE: (
        "omniloop.SimState",
        {
            "type": "object",
            # time too is an array: the simulator's state holds it as one value of shape (1,)
            "properties": {"time": _NUMBERS, "qpos": _NUMBERS, "qvel": _NUMBERS, "act": _NUMBERS},
            "additionalProperties": True,
        },
    ),
    TOPIC_IMAGINED: ("foxglove.CompressedImage", _COMPRESSED_IMAGE),
}

# which of a step's times each topic's log_time is
TOPIC_TIME = {TOPIC_IMAGE: "observation", TOPIC_IMAGINED: "observation", TOPIC_PROPRIO: "observation", TOPIC_AUDIO: "observation",
              TOPIC_INSTRUCTION: "observation", TOPIC_SIM_STATE: "observation", TOPIC_ACTION: "action",
              TOPIC_PLAN: "action", TOPIC_SURPRISE: "result", TOPIC_REWARD: "result"}

_MEDIA_TYPES = {
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".xml": "application/xml",
    ".json": "application/json",
    ".txt": "text/plain",
}


class EpisodeError(Exception):
    """An episode file that is missing, truncated before its metadata, corrupt or not ours; or a folder
    of episodes that is missing or holds none."""


@dataclass
class StepRecord:
    """Everything recorded about one step of an episode."""

    step: int  # step index within the episode
    time_ns: int  # when the observation was captured (time.time_ns() on the agent's clock)
    # keys among image (H, W, 3) uint8, proprio (P,) float32, audio (N,) float32, instruction str
    observation: dict[str, np.ndarray | str]
    action_requested: np.ndarray | None  # (A,) float32
    action_sent: np.ndarray | None  # (A,) float32
    action_applied: np.ndarray | None  # (A,) float32
    reward: float | None
    terminated: bool = False
    truncated: bool = False
    success: bool | None = None
    surprise: dict[str, float] | None = None  # {"total": ..., "latent": ..., "reward": ...}
    plan: dict[str, float | int] | None = None  # any JSON-serialisable dict
    sim_state: dict[str, np.ndarray] | None = None  # time (1,), qpos (nq,), qvel (nv,), act (na,); float64
    imagined: np.ndarray | None = None  # (H, W, 3) uint8: the world model's picture of this observation
    action_time_ns: int | None = None  # when the action was sent; None: time_ns
    result_time_ns: int | None = None  # when the step's result (reward, next observation) came back; None: time_ns
    final: bool = False  # the episode's final observation, after its last action: no action, no reward

    @property
    def action_source(self) -> str | None:
        """Which of the step's actions is the one the body really got, as far as the file knows: the
        first of ACTION_SOURCES that it holds; None for a step without an action."""
        return self._nearest_the_body()[0]

    @property
    def action_taken(self) -> np.ndarray | None:
        """What the body really got: the applied action, else the sent one, else the requested one."""
        return self._nearest_the_body()[1]

    def _nearest_the_body(self) -> tuple[str | None, np.ndarray | None]:
        # in the order of ACTION_SOURCES
        for source, action in (("applied", self.action_applied), ("sent", self.action_sent),
                               ("requested", self.action_requested)):
            if action is not None:
                return source, action
        return None, None


@dataclass
class Episode:
    """An episode as read back from its file."""

    metadata: dict[str, str]
    attachments: dict[str, bytes]
    steps: list[StepRecord]
    complete: bool = True  # False when the file ends before its footer (the writer was killed)
    final: StepRecord | None = None  # the observation the last action led to; None in a torn file
    audio_sample_rate: int | None = None  # from the first /audio message; None without audio
    path: Path | None = None
    recording: dict[str, str] | None = None  # the recorder's closing counts; None in a torn file
    message_counts: dict[str, int] = field(default_factory=dict)  # topic -> messages in the file


def stretches(episode: Episode) -> list[tuple[list[StepRecord], StepRecord]]:
    """The episode's stretches of consecutive steps with actions, each with the observation that
    follows its last action: the next step's, or the episode's final observation. A stretch whose
    last action has no recorded outcome (a gap, or a torn file) ends one step early."""
    steps = [s for s in episode.steps if s.action_taken is not None]
    if episode.final is not None:
        steps.append(episode.final)
    out, stretch = [], []
    for step, after in zip(steps, steps[1:] + [None]):
        stretch.append(step)
        if after is None or after.step != step.step + 1:  # a gap, or the end
            if len(stretch) > 1:
                out.append((stretch[:-1], stretch[-1]))
            stretch = []
    return out


def episode_path(run_dir: str | Path, index: int) -> Path:
    """Where episode `index` of a run is recorded: <run_dir>/episodes/episode_000123.mcap."""
    return Path(run_dir) / "episodes" / f"episode_{index:06d}.mcap"


def episode_files(folder: str | Path) -> list[Path]:
    """Every episode file under `folder`, sorted by path: a run folder (its episodes/), an episodes
    folder, or a tree of runs. Raises EpisodeError for a folder that is missing or holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EpisodeError(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'}")
    paths = sorted(folder.rglob("*.mcap"))
    # hidden files and folders hold no episodes of ours: an export's staging folder, macOS's ._ files
    paths = [p for p in paths if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    if not paths:
        raise EpisodeError(f"{folder}: no episode files (*.mcap)")
    return paths


# ---------------------------------------------------------------------------------------------- writing


class EpisodeWriter:
    """Writes the steps of one episode to an MCAP file; use as a context manager or call `close()`."""

    def __init__(
        self,
        path: str | Path,
        metadata: dict[str, str],
        attachments: dict[str, bytes] | None = None,
        audio_sample_rate: int = 16000,
        flush_every: int = 1,
    ):
        self.path = Path(path)
        _check_metadata(self.path, metadata)
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.audio_sample_rate = int(audio_sample_rate)
        self.flush_every = flush_every
        self.steps_written = 0
        self._last_step: int | None = None
        self._final_written = False
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # "wb": a resumed run records a crashed episode's index again and replaces the torn file.
        self._file: IO[bytes] = self.path.open("wb")
        self._writer = Writer(
            self._file,
            use_chunking=False,  # every record reaches the file at once: a kill loses at most a flush
            compression=CompressionType.NONE,
            index_types=IndexType.ATTACHMENT | IndexType.METADATA,
            enable_data_crcs=True,  # a flipped digit in a complete file is caught on reading, not trained on
        )
        try:
            self._start(metadata, attachments or {})
        except BaseException:
            self._file.close()
            raise

    def _start(self, metadata: dict[str, str], attachments: dict[str, bytes]) -> None:
        """Header, schemas, channels, attachments and metadata, flushed: all that precedes step 0."""
        self._writer.start(profile="", library=FORMAT)
        self._channels = {topic: self._register(topic, name, schema) for topic, (name, schema) in SCHEMAS.items()}
        now = time.time_ns()
        for name, data in attachments.items():
            self._writer.add_attachment(now, now, name, _media_type(name), bytes(data))
        # Metadata last: a reader that finds it knows that every attachment before it is whole.
        self._writer.add_metadata(METADATA_NAME, dict(metadata))
        self._file.flush()  # metadata and attachments survive a kill before the first step

    def _register(self, topic: str, name: str, schema: dict[str, Any]) -> int:
        schema_id = self._writer.register_schema(name, "jsonschema", json.dumps(schema).encode())
        return self._writer.register_channel(topic, "json", schema_id)

    def write(self, record: StepRecord) -> None:
        """Append one step; the file is flushed every `flush_every` steps."""
        if self._closed:
            raise RuntimeError(f"{self.path}: episode writer is closed; step {record.step} was not written")
        if record.step < 0 or record.step >= 2**32:
            raise ValueError(f"{self.path}: step index {record.step} is outside [0, 2**32)")
        if self._last_step is not None and record.step <= self._last_step:
            raise ValueError(f"{self.path}: step {record.step} comes after step {self._last_step}; steps must increase")
        if self._final_written:
            raise ValueError(f"{self.path}: step {record.step} comes after the episode's final observation")
        if record.final and any(a is not None for a in (record.action_requested, record.action_sent,
                                                         record.action_applied)):
            raise ValueError(f"{self.path}: step {record.step}: the final observation takes no action")
        times = {"observation": record.time_ns,
                 "action": record.time_ns if record.action_time_ns is None else record.action_time_ns,
                 "result": record.time_ns if record.result_time_ns is None else record.result_time_ns}
        if min(times.values()) < 0:
            raise ValueError(f"{self.path}: step {record.step} has a negative time: {times}")
        # Encode the whole step before writing any of it: a refused step leaves no stray messages.
        messages = [
            (topic, _to_json(payload, self.path, record.step, topic))
            for topic, payload in _step_payloads(record, self.audio_sample_rate, self.path)
        ]
        for topic, data in messages:
            t = times[TOPIC_TIME[topic]]
            self._writer.add_message(self._channels[topic], log_time=t, data=data, publish_time=t, sequence=record.step)
        self._last_step = record.step
        self._final_written = record.final
        self.steps_written += 1
        if self.steps_written % self.flush_every == 0:
            self._file.flush()

    def add_metadata(self, name: str, data: dict[str, str]) -> None:
        """A metadata record at this point of the file (e.g. the recorder's counts, at the end)."""
        if self._closed:
            raise RuntimeError(f"{self.path}: episode writer is closed; metadata {name!r} was not written")
        self._writer.add_metadata(name, dict(data))

    def close(self) -> None:
        """Write the summary and footer, sync and close the file; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.finish()
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        # Closed on errors too: the steps written so far are whole and worth a footer.
        self.close()


def _check_metadata(path: Path, metadata: dict[str, str]) -> None:
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ValueError(f"{path}: episode metadata lacks {missing}; it needs all of {list(REQUIRED_METADATA)}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"{path}: episode metadata must map str to str; {key!r} -> {type(value).__name__}")


def _media_type(name: str) -> str:
    return _MEDIA_TYPES.get(Path(name).suffix.lower(), "application/octet-stream")


def _step_payloads(record: StepRecord, sample_rate: int, path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The JSON payloads of one step, in writing order; /reward last since it closes the step."""
    where = f"{path}: step {record.step}"
    unknown = sorted(set(record.observation) - set(OBSERVATION_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown observation keys {unknown}; known: {list(OBSERVATION_KEYS)}")
    obs = record.observation
    payloads: list[tuple[str, dict[str, Any]]] = []
    if "image" in obs:
        payloads.append((TOPIC_IMAGE, _image_payload(obs["image"], record.time_ns, where)))
    if record.imagined is not None:
        payloads.append((TOPIC_IMAGINED, _image_payload(record.imagined, record.time_ns, f"{where}: imagined",
                                                        IMAGINED_FRAME)))
    if "proprio" in obs:
        payloads.append((TOPIC_PROPRIO, {"values": _vector(obs["proprio"], f"{where}: proprio")}))
    if "audio" in obs:
        samples = _vector(obs["audio"], f"{where}: audio")
        payloads.append((TOPIC_AUDIO, {"sample_rate": sample_rate, "samples": samples}))
    if "instruction" in obs:
        if not isinstance(obs["instruction"], str):
            raise TypeError(f"{where}: instruction must be a str, got {type(obs['instruction']).__name__}")
        payloads.append((TOPIC_INSTRUCTION, {"text": obs["instruction"]}))
    if record.sim_state is not None:
        sim = {str(k): np.asarray(v, np.float64).tolist() for k, v in record.sim_state.items()}
        payloads.append((TOPIC_SIM_STATE, sim))
    actions = {
        "requested": record.action_requested,
        "sent": record.action_sent,
        "applied": record.action_applied,
    }
    if any(a is not None for a in actions.values()):
        payloads.append(
            (TOPIC_ACTION, {k: None if a is None else _vector(a, f"{where}: action {k}") for k, a in actions.items()})
        )
    if record.plan is not None:
        payloads.append((TOPIC_PLAN, dict(record.plan)))
    if record.surprise is not None:
        payloads.append((TOPIC_SURPRISE, {str(k): float(v) for k, v in record.surprise.items()}))
    payloads.append(
        (
            TOPIC_REWARD,
            {
                "reward": None if record.reward is None else float(record.reward),
                **({"final": True} if record.final else {}),
                "terminated": bool(record.terminated),
                "truncated": bool(record.truncated),
                "success": None if record.success is None else bool(record.success),
            },
        )
    )
    return payloads


def _image_payload(image: np.ndarray | str, time_ns: int, where: str, frame_id: str = CAMERA_FRAME) -> dict[str, Any]:
    """(H, W, 3) uint8 RGB -> a foxglove.CompressedImage with a PNG inside."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"{where}: image must be (H, W, 3) uint8, got shape {shape} dtype {dtype}")
    # OpenCV writes BGR; swapping here keeps the PNG in true colour for every other viewer.
    ok, png = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f"{where}: OpenCV could not encode the {image.shape} image as PNG")
    sec, nsec = divmod(time_ns, 1_000_000_000)
    return {
        "timestamp": {"sec": sec, "nsec": nsec},
        "frame_id": frame_id,
        "data": base64.b64encode(png.tobytes()).decode("ascii"),
        "format": "png",
    }


def _vector(values: np.ndarray | str, where: str) -> list[float]:
    """(N,) numbers -> a list of float32 values (written as the float64 numbers they are, so exactly)."""
    if isinstance(values, str):
        raise TypeError(f"{where}: expected an array of numbers, got a str")
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{where}: expected a 1-D array, got shape {array.shape}")
    return array.astype(np.float32).tolist()


def _to_json(payload: dict[str, Any], path: Path, step: int, topic: str) -> bytes:
    try:
        return json.dumps(payload, allow_nan=False, separators=(",", ":"), default=json_default).encode()
    except ValueError:
        raise ValueError(f"{path}: step {step}: {topic} holds NaN or infinity, which JSON cannot carry") from None
    except TypeError as exc:
        raise TypeError(f"{path}: step {step}: {topic} is not JSON-serialisable: {exc}") from None


# ---------------------------------------------------------------------------------------------- reading


class _Torn(EndOfFile):
    """The file ends inside a record."""


class _Corrupt(McapError):
    """A record that cannot be what it claims to be."""


class _ExactReads:
    """A file whose reads return exactly what was asked or raise: mcap's own stream accepts short reads,
    which would hand a torn last record over as if it were whole."""

    def __init__(self, file: IO[bytes]):
        self._file = file
        self.offset = 0

    def read(self, n: int) -> bytes:
        if n < 0:
            raise _Corrupt(f"a record length runs negative at byte {self.offset}")
        data = self._file.read(n)
        if len(data) < n:
            raise _Torn()
        self.offset += n
        return data


@dataclass
class _Assembler:
    """Collects records into steps; a step is whole once its /reward message arrives."""

    path: Path
    metadata: dict[str, str] | None = None
    attachments: dict[str, bytes] = field(default_factory=dict)
    topics: dict[int, str] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    audio_sample_rate: int | None = None
    open_step: int | None = None
    parts: dict[str, Any] = field(default_factory=dict)
    times: dict[str, int] = field(default_factory=dict)  # topic -> log_time, in the open step
    data_ended: bool = False
    recording: dict[str, str] | None = None
    message_counts: dict[str, int] = field(default_factory=dict)
    final: StepRecord | None = None
    unclosed_step: int | None = None  # a step the writer began but never closed

    @property
    def last_good(self) -> str:
        return f"step {self.steps[-1].step}" if self.steps else "no step"

    def add(self, record: object) -> None:
        if isinstance(record, Schema) or self.data_ended:
            return  # schemas are implied by topics; the summary only repeats what came before
        if isinstance(record, Channel):
            self.topics[record.id] = record.topic
        elif isinstance(record, Metadata) and record.name == METADATA_NAME:
            self.metadata = dict(record.metadata)
        elif isinstance(record, Metadata) and record.name == RECORDING_METADATA:
            self.recording = dict(record.metadata)
        elif isinstance(record, Attachment):
            self.attachments[record.name] = record.data
        elif isinstance(record, Message):
            self._add_message(record)
        elif isinstance(record, DataEnd):
            if self.open_step is not None:  # the writer failed inside a step and closed the file: keep the rest
                self.unclosed_step = self.open_step
                self.open_step, self.parts = None, {}
            self.data_ended = True

    def _add_message(self, message: Message) -> None:
        if self.metadata is None:
            raise EpisodeError(
                f"{self.path}: not an omniloop episode (a message precedes any '{METADATA_NAME}' metadata)"
            )
        topic = self.topics.get(message.channel_id)
        if topic is None:
            raise _Corrupt(f"a message on unregistered channel {message.channel_id}")
        self.message_counts[topic] = self.message_counts.get(topic, 0) + 1
        if topic not in SCHEMAS:
            return  # a channel a later version added; this reader has no field for it
        step = message.sequence
        if self.open_step is None:
            if self.steps and step <= self.steps[-1].step:
                raise _Corrupt(f"step {step} follows step {self.steps[-1].step}")
            self.open_step, self.parts, self.times = step, {}, {}
        elif step != self.open_step:
            raise _Corrupt(f"a {topic} message of step {step} inside step {self.open_step}")
        if topic in self.parts:
            raise _Corrupt(f"two {topic} messages in step {step}")
        try:
            self.parts[topic] = json.loads(message.data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _Corrupt(f"the {topic} message of step {step} is not JSON ({exc})") from None
        self.times[topic] = message.log_time
        if topic == TOPIC_REWARD:
            if self.final is not None:
                raise _Corrupt(f"step {step} follows the episode's final observation")
            try:
                record = self._step_record(step)
                if record.final:
                    self.final = record
                else:
                    self.steps.append(record)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise _Corrupt(f"step {step} holds a malformed message: {exc!r}") from None
            self.open_step, self.parts = None, {}

    def _step_record(self, step: int) -> StepRecord:
        parts, times = self.parts, self.times
        # the observation's capture time: from its channels, else (a step that recorded none) the first message's
        observed = [times[t] for t in times if TOPIC_TIME[t] == "observation"]
        time_ns = observed[0] if observed else next(iter(times.values()))
        observation: dict[str, np.ndarray | str] = {}
        if TOPIC_IMAGE in parts:
            observation["image"] = _decode_image(parts[TOPIC_IMAGE])
        if TOPIC_PROPRIO in parts:
            observation["proprio"] = np.asarray(parts[TOPIC_PROPRIO]["values"], np.float32)
        if TOPIC_AUDIO in parts:
            observation["audio"] = np.asarray(parts[TOPIC_AUDIO]["samples"], np.float32)
            if self.audio_sample_rate is None:
                self.audio_sample_rate = int(parts[TOPIC_AUDIO]["sample_rate"])
        if TOPIC_INSTRUCTION in parts:
            observation["instruction"] = str(parts[TOPIC_INSTRUCTION]["text"])
        action = parts.get(TOPIC_ACTION, {})
        reward = parts[TOPIC_REWARD]
        imagined = _decode_image(parts[TOPIC_IMAGINED]) if TOPIC_IMAGINED in parts else None
        sim = parts.get(TOPIC_SIM_STATE)
        return StepRecord(
            step=step,
            time_ns=time_ns,
            observation=observation,
            action_requested=_maybe_array(action.get("requested")),
            action_sent=_maybe_array(action.get("sent")),
            action_applied=_maybe_array(action.get("applied")),
            reward=None if reward["reward"] is None else float(reward["reward"]),
            terminated=bool(reward["terminated"]),
            truncated=bool(reward["truncated"]),
            success=None if reward["success"] is None else bool(reward["success"]),
            surprise=None if TOPIC_SURPRISE not in parts else {k: float(v) for k, v in parts[TOPIC_SURPRISE].items()},
            plan=parts.get(TOPIC_PLAN),
            sim_state=None if sim is None else {k: np.asarray(v, np.float64) for k, v in sim.items()},
            imagined=imagined,
            action_time_ns=times.get(TOPIC_ACTION, times.get(TOPIC_PLAN)),
            result_time_ns=times[TOPIC_REWARD],
            final=bool(reward.get("final", False)),
        )


def _maybe_array(values: list[float] | None) -> np.ndarray | None:
    return None if values is None else np.asarray(values, np.float32)


def _decode_image(payload: dict[str, Any]) -> np.ndarray:
    """A foxglove.CompressedImage with a PNG -> (H, W, 3) uint8 RGB."""
    if payload["format"] != "png":
        raise ValueError(f"image format {payload['format']!r}, expected 'png'")
    png = np.frombuffer(base64.b64decode(payload["data"], validate=True), np.uint8)
    bgr = cv2.imdecode(png, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("image data is not a PNG")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def read_episode(path: str | Path) -> Episode:
    """Read an episode file; a file torn by a crash gives its whole steps and `complete=False`.

    Raises EpisodeError for a missing file, one that is not MCAP or not an omniloop episode, one torn
    before its metadata, and one whose records are corrupt (naming the last good step).
    """
    path = Path(path)
    if not path.is_file():
        raise EpisodeError(f"{path}: episode file not found")
    size = path.stat().st_size
    assembler = _Assembler(path)
    complete = False
    with path.open("rb") as file:
        stream = _ExactReads(file)
        # The size limit keeps a corrupt length field from asking for gigabytes.
        reader = StreamReader(stream, record_size_limit=size, validate_crcs=True)  # checked at the data's end
        try:
            for record in reader.records:
                assembler.add(record)
                if isinstance(record, Footer):
                    complete = True  # the closing magic is read on the next turn; if torn, _Torn follows
        except _Torn:
            complete = False
        except InvalidMagic:
            if stream.offset <= 8:
                raise EpisodeError(f"{path}: not an MCAP file (bad magic bytes)") from None
            raise EpisodeError(f"{path}: corrupt closing magic after {assembler.last_good}") from None
        except (McapError, UnicodeDecodeError, ValueError) as exc:
            where = f"near byte {stream.offset} after {assembler.last_good}"
            raise EpisodeError(f"{path}: corrupt {where}: {exc}") from None
    if assembler.metadata is None:
        if complete:
            raise EpisodeError(f"{path}: not an omniloop episode (no '{METADATA_NAME}' metadata)")
        raise EpisodeError(f"{path}: file ends at byte {size}, before its episode metadata; no step is readable")
    return Episode(
        metadata=assembler.metadata,
        attachments=assembler.attachments,
        steps=assembler.steps,
        complete=complete and assembler.unclosed_step is None,  # a step the writer never closed is torn
        final=assembler.final,
        audio_sample_rate=assembler.audio_sample_rate,
        path=path,
        recording=assembler.recording,
        message_counts={t: assembler.message_counts.get(t, 0) for t in assembler.topics.values()},
    )
