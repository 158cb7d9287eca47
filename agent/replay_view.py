"""An episode in the Rerun viewer: `omniloop replay FILE --mode view [--save FILE.rrd | --viewer URL]`.

Every step is logged on two timelines, `step` and `capture_time` (the observation's real capture
time), so the viewer can scrub by either:

    camera, imagined               images (the camera, and the world model's picture of it)
    proprio, action/{requested,sent,applied}, reward, surprise/*, plan/*   scalars, one series each
    instruction                    text, when the task has one
    episode                        the file's metadata, once

Without --save or --viewer, a viewer is spawned (`rerun` must be able to open a window).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.episodes import Episode, EpisodeError


def view_episode(episode: Episode, save: Path | None = None, connect: str | None = None) -> int:
    """Log the episode to Rerun; returns the steps logged."""
    try:
        import rerun as rr
    except ImportError:
        raise EpisodeError("--mode view needs rerun-sdk: pip install 'omniloop[viewer]'") from None
    meta = episode.metadata
    rec = rr.RecordingStream("omniloop", recording_id=f"{meta.get('run', 'run')}-episode-{meta.get('episode', '?')}")
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        rec.save(save)
    elif connect is not None:
        rec.connect_grpc(connect)
    else:
        try:
            rec.spawn()
        except Exception as exc:  # no display, or no viewer binary
            raise EpisodeError(f"cannot start the Rerun viewer ({exc}); save the recording with --save FILE.rrd "
                               "and open it where there is a screen") from None
    lines = "\n".join(f"- **{k}**: {v}" for k, v in meta.items())
    rec.log("episode", rr.TextDocument(f"# {episode.path}\n\n{lines}", media_type=rr.MediaType.MARKDOWN), static=True)
    for step in episode.steps:
        rec.set_time("step", sequence=step.step)
        rec.set_time("capture_time", timestamp=np.datetime64(step.time_ns, "ns"))
        obs = step.observation
        if "image" in obs:
            rec.log("camera", rr.Image(obs["image"]))
        if step.imagined is not None:
            rec.log("imagined", rr.Image(step.imagined))
        if "proprio" in obs:
            rec.log("proprio", rr.Scalars(np.asarray(obs["proprio"], np.float64)))
        if "instruction" in obs:
            rec.log("instruction", rr.TextLog(str(obs["instruction"])))
        for name in ("requested", "sent", "applied"):
            action = getattr(step, f"action_{name}")
            if action is not None:
                rec.log(f"action/{name}", rr.Scalars(np.asarray(action, np.float64)))
        if step.reward is not None:
            rec.log("reward", rr.Scalars(step.reward))
        for key, value in (step.surprise or {}).items():
            rec.log(f"surprise/{key}", rr.Scalars(float(value)))
        for key, value in (step.plan or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rec.log(f"plan/{key}", rr.Scalars(float(value)))
    rec.flush()
    if save is not None:
        rec.disconnect()  # the footer is written and the file closed
    return len(episode.steps)
