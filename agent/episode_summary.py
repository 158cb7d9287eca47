"""What `omniloop episodes ls` and `omniloop episodes info` say about recorded episodes.

An episode's control rate is measured from the capture times of its observations (agent steps per
second between the first and the last, counting the steps the file lacks) and compared with the
body's control rate in the file's metadata (`control_hz`). A rate below 90 % of the target is
flagged. On a robot that is a fault: the agent fell behind its body (planning or learning took
longer than a control period). A simulation waits for the agent, so there it only says that the
episode ran slower than real time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.episodes import Episode, EpisodeError, episode_files, read_episode

SLOW_FRACTION = 0.9  # an achieved rate below this share of the target is flagged


@dataclass
class EpisodeSummary:
    path: Path
    steps: int
    episode_return: float
    success: bool | None  # the last step's success, where the task reports one
    duration_s: float  # first observation's capture to the last step's result
    rate_hz: float | None  # achieved control rate; None with fewer than two steps
    target_hz: float | None  # the body's control rate; None in files that do not record it
    complete: bool  # False: the writer was killed before the footer
    dropped_steps: int | None  # steps the recorder could not keep up with; None in a torn file
    failure: str | None  # why the recording stopped early, if it did
    on_robot: bool  # recorded on a robot (the env in its metadata is robot:...)
    message_counts: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    attachments: dict[str, int] = field(default_factory=dict)  # name -> bytes

    @property
    def slow(self) -> bool:
        """The achieved control rate is below 90 % of the target."""
        return self.rate_hz is not None and self.target_hz is not None and self.rate_hz < SLOW_FRACTION * self.target_hz


def summarize(episode: Episode) -> EpisodeSummary:
    steps = episode.steps
    rewards = [s.reward for s in steps if s.reward is not None]
    duration = (steps[-1].result_time_ns - steps[0].time_ns) / 1e9 if steps else 0.0
    span = (steps[-1].time_ns - steps[0].time_ns) / 1e9 if len(steps) > 1 else 0.0
    target = _number(episode.metadata.get("control_hz"))
    recording = episode.recording or {}
    dropped = recording.get("dropped_steps")
    return EpisodeSummary(
        path=episode.path or Path("?"),
        steps=len(steps),
        episode_return=float(sum(rewards)),
        success=next((s.success for s in reversed(steps) if s.success is not None), None),
        duration_s=duration,
        rate_hz=(steps[-1].step - steps[0].step) / span if span > 0 else None,
        target_hz=target,
        complete=episode.complete,
        dropped_steps=None if _number(dropped) is None else int(dropped),
        failure=recording.get("failure") or None,
        on_robot=episode.metadata.get("env", "").startswith("robot:"),
        message_counts=dict(episode.message_counts),
        metadata=dict(episode.metadata),
        attachments={name: len(data) for name, data in episode.attachments.items()},
    )


def _number(text: str | None) -> float | None:
    """A number from the file's metadata; None where it is missing or not a number."""
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def summarize_folder(folder: Path) -> list[EpisodeSummary | EpisodeError]:
    """A summary per file; a file that cannot be read gives its error in its place, and the rest go on."""
    out: list[EpisodeSummary | EpisodeError] = []
    for path in episode_files(folder):
        try:
            out.append(summarize(read_episode(path)))
        except EpisodeError as exc:
            out.append(exc)
    return out
