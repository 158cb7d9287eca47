"""Learning from recorded episodes, before any online step: `omniloop train --episodes DIR`.

The episodes go into the replay memory as the loop would have put them there: each step's
observation (frames stacked as the config stacks them), the action the body applied, the reward,
and the surprise measured at the time as the step's first priority. The learner then takes its
steps on that memory: world model (latent consistency, reward, reconstruction), value and policy,
exactly as online. The result is a run folder with a checkpoint that `omniloop sim --init` starts
from, and the losses in metrics.csv. With `--init CHECKPOINT` the learner starts from that brain's
weights and optimizer moments instead of fresh ones (more updates on a finished run's own episodes,
say); the memory still holds exactly the episodes given.

An episode file holds every observation the agent acted on, but not the one after its last action;
that last transition of each episode is left out.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from agent.brain import Brain
from agent.config import Config, save_config
from agent.episodes import Episode, EpisodeError, StepRecord, episode_files, read_episode, stretches
from agent.replay import episode_config

LOG_EVERY = 50  # learner steps per row of metrics.csv


def read_episodes(folder: Path) -> list[Episode]:
    """Every episode file under `folder` (a run folder or its episodes/), read and checked."""
    episodes = [read_episode(p) for p in episode_files(folder)]
    if not any(len(e.steps) > 1 for e in episodes):
        raise EpisodeError(f"{folder}: no episode holds two whole steps; nothing to learn from")
    return episodes


def recorded_config(episodes: list[Episode], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config the episodes were recorded with (the first one's attachment), with overrides."""
    return episode_config(episodes[0], overrides)


def observation_spec(episodes: list[Episode], frame_stack: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (shape, dtype)} of the observations the agent saw: recorded frames are the newest of each
    stack, so the image gets its stacked channel count back."""
    first = next(e.steps[0] for e in episodes if e.steps)
    spec = {}
    for key in ("image", "proprio", "audio"):
        value = first.observation.get(key)
        if isinstance(value, np.ndarray):
            shape = (*value.shape[:-1], value.shape[-1] * frame_stack) if key == "image" else value.shape
            spec[key] = (tuple(int(n) for n in shape), value.dtype.name)
    if not spec:
        raise EpisodeError(f"{episodes[0].path}: its steps hold no image, proprio or audio to learn from")
    return spec


def fill_memory(brain: Brain, episodes: list[Episode], frame_stack: int) -> int:
    """Add every episode to the brain's memory, one stretch of consecutive steps at a time (a gap in
    the step indices is steps the file lacks, and no transition crosses it); returns the
    transitions added."""
    added = 0
    for episode in episodes:
        for stretch, after in stretches(episode):
            frames: list[np.ndarray] = []
            for i, step in enumerate(stretch):
                obs = _observation(step, frames, frame_stack, first=i == 0)
                _check_shapes(episode, step, obs, brain)
                surprise = (step.surprise or {}).get("total")
                brain.memory.add(brain.prepare(obs), step.action_taken, float(step.reward or 0.0), step.terminated,
                                 surprise)
                added += 1
            # the observation that the stretch's last action led to closes it (its frames stacked on)
            brain.memory.add(brain.prepare(_observation(after, frames, frame_stack, first=False)))
    if not added:
        raise EpisodeError("no episode holds a step with an action and the observation after it")
    return added


def train_offline(cfg: Config, episodes: list[Episode], out: Path, updates: int, show_progress: bool = True,
                  init: Path | None = None) -> dict:
    """Fill a brain's memory with `episodes`, take `updates` learner steps, and write a run folder:
    config.yaml, metrics.csv (the losses every 50 steps), health.png and checkpoint.safetensors.
    `init`: a checkpoint whose weights and optimizer moments the learner starts from (not its memory)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from agent.checkpoint import save_checkpoint
    from agent.loop import CHECKPOINT, start_from
    from agent.metrics import MetricsLog
    from agent.plots import plot_health

    spec = observation_spec(episodes, cfg.env.frame_stack)
    taken = next(s.action_taken for e in episodes for s in e.steps if s.action_taken is not None)
    action_dim = int(taken.shape[0])
    brain = Brain(cfg, spec, action_dim)
    if init is not None:  # before any file is written: a brain that does not fit leaves no run behind
        start_from(brain, init, with_memory=False)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    transitions = fill_memory(brain, episodes, cfg.env.frame_stack)
    metrics = MetricsLog(out / "metrics.csv")
    start = time.perf_counter()
    row: dict = {}
    bar = Progress(MofNCompleteColumn(), BarColumn(bar_width=16), TextColumn("{task.fields[status]}"),
                   TimeRemainingColumn(), disable=not show_progress)
    with bar:
        task = bar.add_task("offline", total=updates, status="")
        done = 0
        while done < updates:
            chunk = brain.learn(min(LOG_EVERY, updates - done))
            if not chunk:
                raise EpisodeError(f"the episodes are shorter than a learner sequence (learner.horizon "
                                   f"{cfg.learner.horizon} + 1 steps): nothing to sample")
            done += len(chunk)
            row = {"update": done, "wall_s": time.perf_counter() - start, "transitions": transitions,
                   "skipped_updates": brain.learner.skipped, "restored_weights": brain.learner.restored,
                   **{f"train_{k}": float(np.mean([m[k] for m in chunk])) for k in chunk[0]}}
            metrics.append(row)
            bar.update(task, completed=done, status=f"loss {row.get('train_loss', float('nan')):.3f}")
    tensors, meta = brain.state()
    meta.update(env_step=0, episode=0, wall_s=time.perf_counter() - start, offline_updates=done,
                **({"init": str(init)} if init is not None else {}))
    save_checkpoint(out / CHECKPOINT, tensors, meta)
    plot_health(out / "metrics.csv", out / "health.png", x="update")
    return {"transitions": transitions, "updates": done, "episodes": len(episodes), "spec": spec,
            "action_dim": action_dim, "last": row}


def _observation(step: StepRecord, frames: list[np.ndarray], k: int, first: bool) -> dict[str, np.ndarray]:
    """The step's observation with its image stacked as the env stacked it (the first frame repeated)."""
    obs = {key: v for key, v in step.observation.items() if isinstance(v, np.ndarray)}
    if "image" in obs and k > 1:
        if first:
            frames[:] = [obs["image"]] * k
        else:
            frames[:] = [*frames[1:], obs["image"]]
        obs["image"] = np.concatenate(frames, axis=-1)
    return obs


def _check_shapes(episode: Episode, step: StepRecord, obs: dict, brain: Brain) -> None:
    for key, (shape, _) in brain.spec.items():
        if key not in obs or obs[key].shape != shape:
            got = None if key not in obs else list(obs[key].shape)
            raise EpisodeError(f"{episode.path}: step {step.step}: {key} is {got}, the other episodes' is {list(shape)}")
