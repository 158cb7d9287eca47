"""The loop: observe, plan, act, update. Everything the agent does happens here, in this order.

    o_t --encode--> z_t --deliberate--> a_t (+ the latent and reward it expects)
    body.step(a_t) --> o_{t+1}, r_t --encode--> z_{t+1}
    surprise_t = how far z_{t+1} and r_t fell from what was expected
      -> the step's replay priority, how many learner steps to take now, whether to drop the plan,
         and how long to think next time
    every step goes to the episode file; every episode to metrics.csv; checkpoints now and then.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import sim
from agent import run_lock
from agent.body import fit_deadline, make_body
from agent.brain import Brain
from agent.checkpoint import load_checkpoint, save_checkpoint
from agent.config import Config, ConfigError, changed_fields, flat, save_config, to_dict
from agent.episodes import StepRecord
from agent.metrics import MetricsLog
from agent.plots import plot_health, plot_learning_curve
from agent.progress import Progress
from agent.recorder import EpisodeRecorder
from agent.video import write_side_by_side

CHECKPOINT = "checkpoint.safetensors"
MAX_STALE_STREAK = 100  # stale observations in a row before the run stops: the link is not working


@dataclass
class Counters:
    env_step: int = 0
    episode: int = 0
    started: float = field(default_factory=time.time)


@dataclass
class EpisodeResult:
    row: dict[str, float | int]  # the episode's line of metrics.csv
    real: list[np.ndarray]  # camera frames, for the video
    imagined: list[np.ndarray]  # what the model pictured for each frame


@functools.cache
def code_version() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run(cfg: Config, run_dir: Path, resume: bool = False, show_progress: bool = True,
        after_episode: Callable[[Brain, int], None] | None = None, body: str = "sim",
        clear_fault: bool = False, init: Path | None = None) -> list[dict]:
    """Run the agent for cfg.run.steps agent steps (decisions) in total, writing everything into run_dir.

    `body` is "sim" or "robot" (agent/body.py); `clear_fault` lets a robot be re-armed over a latched
    fault, once. `init` starts a new run from a checkpoint's brain (weights, optimizers and memory,
    e.g. from `omniloop train`), with the counters at zero. `after_episode(brain, env_step)` runs
    between episodes (a benchmark evaluates there)."""
    if cfg.run.torch_threads:
        torch.set_num_threads(cfg.run.torch_threads)
    torch.manual_seed(cfg.run.seed)
    with run_lock.hold(run_dir):  # first: a second process must not even connect to the robot
        if not resume and (run_dir / "metrics.csv").exists():
            how = ("continue it with --resume" if (run_dir / CHECKPOINT).exists()
                   else "it stopped before its first checkpoint, so delete it")
            raise FileExistsError(f"{run_dir} already holds a run: {how}, or choose another --out")
        env, body_name = make_body(cfg, body, clear_fault)  # a body that cannot be built leaves no run folder
        try:
            if body == "robot":
                fit_deadline(cfg, sim.control_period(env))
            counters = Counters()
            # nothing is written to the run folder until the brain is built and its checkpoint fits
            brain = Brain(cfg, sim.observation_spec(env.observation_space), env.action_space.shape[0])
            if init is not None:
                start_from(brain, init)
            if resume:
                meta = resume_from(brain, cfg, run_dir / CHECKPOINT)
                counters.env_step, counters.episode = meta["env_step"], meta["episode"]
                counters.started = time.time() - meta["wall_s"]  # wall_s keeps counting from where it stopped
            return learn(env, brain, cfg, run_dir, counters, resume, show_progress, after_episode, body_name)
        finally:
            env.close()


def learn(env, brain: Brain, cfg: Config, run_dir: Path, counters: Counters, resume: bool, show_progress: bool,
          after_episode: Callable[[Brain, int], None] | None, body_name: str) -> list[dict]:
    """The episodes of a run whose body and brain are built, in the run folder this process holds."""
    save_config(cfg, run_dir / "config.yaml")
    metrics = MetricsLog(run_dir / "metrics.csv")
    if resume:  # episodes that ended after the checkpoint (a crash, a kill) run again: their rows and files go
        metrics.drop_after("episode", counters.episode)
        set_aside_episodes(run_dir / "episodes", counters.episode)
    rows: list[dict] = []
    last: EpisodeResult | None = None
    with Progress(cfg.run.steps, counters.env_step, enabled=show_progress) as progress:
        while counters.env_step < cfg.run.steps:
            last = run_episode(env, brain, cfg, run_dir, counters, progress, body_name)
            metrics.append(last.row)
            rows.append(last.row)
            progress.episode_done(last.row)
            if after_episode is not None:
                after_episode(brain, counters.env_step)
            if counters.episode % cfg.run.checkpoint_every == 0:
                checkpoint(brain, counters, run_dir)
    checkpoint(brain, counters, run_dir)
    if last is not None and cfg.run.video and last.imagined:
        write_side_by_side(run_dir / "last_episode.mp4", last.real, last.imagined, fps=1 / sim.control_period(env))
    return rows


def run_episode(env, brain: Brain, cfg: Config, run_dir: Path, counters: Counters, progress: Progress,
                body_name: str) -> EpisodeResult:
    seed = cfg.run.seed * 100_003 + counters.episode  # a fresh, reproducible start for every episode
    obs, info = env.reset(seed=seed)
    captured = capture_time(info)
    brain.deliberation.new_episode()
    o = brain.prepare(obs)
    z = brain.encode(o)
    # what the model pictures of each observation, for the episode file and the last episode's video
    imagine = (cfg.run.video or cfg.run.record_episodes) and "image" in o
    keep_frames = cfg.run.video and "image" in o
    picture = brain.imagine_frame(z) if imagine else None  # of o_t, from o_t itself at the start
    real = [sim.newest_frame(o["image"])] if keep_frames else []
    imagined = [picture] if keep_frames else []
    averages = Averages()
    ret, success, t, start, done = 0.0, None, 0, time.perf_counter(), False
    stale_streak = stale_holds = 0
    recorder = open_recorder(env, cfg, run_dir, counters.episode, seed, body_name) if cfg.run.record_episodes else None
    try:
        while not done and counters.env_step < cfg.run.steps:
            if info.get("stale") or time.monotonic() > info.get("stale_at", float("inf")):
                # a robot's observation is too old to act on (it came late, or learning took long):
                # hold the robot instead of planning on it, and go on from the next fresh one (the
                # experience in memory breaks here)
                brain.memory.add(o)
                brain.deliberation.interrupted()
                obs, info = env.reset(options={"hold": True})
                captured = capture_time(info)
                o = brain.prepare(obs)
                z = brain.encode(o)
                picture = brain.imagine_frame(z) if imagine else None  # no prediction reaches across a hold
                stale_streak += 1
                if stale_streak > MAX_STALE_STREAK:
                    raise ConnectionError(f"{stale_streak} observations in a row arrived stale (the last "
                                          f"{info.get('obs_age_s', float('nan')):.3f} s old): the link or the "
                                          "robot's clock is off; see bridge.max_obs_age_s")
                stale_holds += 1
                continue
            stale_streak = 0
            # observe -> plan
            state = sim_state(env) if recorder is not None else None  # the state o_t was seen in
            step = brain.act(z, explore=True, random=counters.env_step < cfg.run.seed_steps)
            # act
            acted = time.time_ns()
            next_obs, reward, terminated, truncated, info = env.step(step.action)
            returned = time.time_ns()
            done = terminated or truncated
            # a robot reports what it sent and applied; a simulation applies the action within its limits
            sent = info.get("action_sent", step.action)
            applied = info.get("action_applied")
            if applied is None:
                applied = np.clip(step.action, env.action_space.low, env.action_space.high)
            # what the model expected to see, pictured with the decoder that expected it (before learning)
            next_picture = brain.imagine_frame(step.expected_latent) if imagine else None
            # update: surprise -> priority, replanning, thinking budget, learner steps
            o_next = brain.prepare(next_obs)
            z_next = brain.encode(o_next)
            s = brain.surprise(step, z_next, float(reward))
            brain.memory.add(o, applied, float(reward), terminated, s["total"])
            replanned = brain.deliberation.observe(s["total"])
            brain.deliberation.rewarded(float(reward))
            learned = []
            if counters.env_step + 1 >= cfg.run.seed_steps:  # from the last random step: the first plan is learned
                # the first learner call catches up on the seed data at once; later ones follow surprise
                first = brain.learner.updates + brain.learner.skipped == 0  # nothing learned or tried yet
                due = brain.updates_due(brain.deliberation.relative_surprise)
                learned = brain.learn(max(1, cfg.run.warmup_updates) if first else due)
            if learned:
                z_next = brain.encode(o_next)  # the encoder moved: plan next from the fresh latent

            # record (a hold leaves a gap in the file's step indices: no transition crosses it)
            trace = step.trace.scalars() if step.trace else {}
            if recorder is not None:
                recorder.record(StepRecord(
                    step=t + stale_holds, time_ns=captured, observation=recorded(obs), action_requested=step.action,
                    action_sent=sent, action_applied=applied, reward=float(reward),
                    terminated=bool(terminated), truncated=bool(truncated), success=info.get("success"),
                    surprise=s, plan=trace or None, sim_state=state, imagined=picture, action_time_ns=acted,
                    result_time_ns=returned))
            picture = next_picture
            if keep_frames:
                real.append(sim.newest_frame(o_next["image"]))
                imagined.append(picture)
            averages.add({"surprise": s["total"], "surprise_latent": s["latent"], "surprise_reward": s["reward"],
                          "replanned": float(replanned), **{f"plan_{k}": float(v) for k, v in trace.items()}})
            for m in learned:
                averages.add(m, prefix="train_")
            ret += float(reward)
            success = info.get("success", success)
            counters.env_step += 1
            t += 1
            progress.step(counters.env_step, s["total"], trace.get("think_ms"))
            obs, o, z, captured = next_obs, o_next, z_next, capture_time(info, returned)
        if recorder is not None and t > 0:  # the observation the last action led to closes the file's episode
            recorder.record(StepRecord(
                step=t + stale_holds, time_ns=captured, observation=recorded(obs), action_requested=None,
                action_sent=None, action_applied=None, reward=None, sim_state=sim_state(env), imagined=picture,
                final=True))
    finally:
        if recorder is not None:
            recorder.close()

    brain.memory.add(o)  # the episode's last observation closes its sequences (also when the run ends mid-way)
    counters.episode += 1
    elapsed = time.perf_counter() - start
    row = {"env_step": counters.env_step, "episode": counters.episode, "return": ret, "length": t,
           "steps_per_s": t / max(elapsed, 1e-9), "wall_s": time.time() - counters.started,
           "updates": brain.learner.updates, "skipped_updates": brain.learner.skipped,
           "restored_weights": brain.learner.restored}
    if recorder is not None:  # steps the episode file lacks: its writer fell behind, or a write failed
        row["record_dropped_steps"] = recorder.dropped
        row["record_failed"] = int(recorder.failure is not None)
        row["record_writer_ms"] = 1000.0 * recorder.writer_cpu_s / max(recorder.written, 1)  # CPU per step
    if "stale" in info:  # only a remote body can be late
        row["stale_holds"] = stale_holds
    if success is not None:  # only tasks that report success get the column
        row["success"] = float(success)
    row.update(averages.means())
    return EpisodeResult(row, real, imagined)


def open_recorder(env, cfg: Config, run_dir: Path, episode: int, seed: int, body_name: str) -> EpisodeRecorder:
    attachments = {"config.yaml": (run_dir / "config.yaml").read_bytes()}
    model_xml = getattr(env.unwrapped, "model_xml", None)
    if callable(model_xml):
        attachments["model.xml"] = model_xml().encode()
    meta = {"run": run_dir.name, "seed": str(seed), "env": body_name, "episode": str(episode),
            "code_version": code_version(), "objective": objective_name(cfg, body_name)}
    try:
        meta["control_hz"] = f"{1.0 / sim.control_period(env):.6g}"
    except ValueError:  # a body that does not say its rate: its episodes say nothing of it either
        pass
    return EpisodeRecorder(run_dir / "episodes" / f"episode_{episode:06d}.mcap", meta, attachments,
                           flush_every=cfg.run.record_flush_every, queue_steps=cfg.run.record_queue_steps,
                           audio_sample_rate=audio_sample_rate(env))


def audio_sample_rate(env) -> int:
    """The body's audio rate: a robot's spec says it (`extra.sample_rates`); the simulation's is fixed."""
    spec = getattr(env.unwrapped, "spec_", None)
    rates = getattr(spec, "extra", {}).get("sample_rates", {}) if spec is not None else {}
    return int(rates.get("audio", sim.AUDIO_SAMPLE_RATE))


def objective_name(cfg: Config, body_name: str) -> str:
    """What the reward in the file means: the body's own task, or the config's objective on a robot."""
    objective = cfg.objective
    if objective.kind == "env":
        return f"env: the reward of {body_name}"
    return json.dumps(dataclasses.asdict(objective), separators=(",", ":"))


def capture_time(info: dict, now: int | None = None) -> int:
    """When an observation was captured, on this clock: a robot says how old it was on arrival."""
    now = time.time_ns() if now is None else now
    return now - int(info.get("obs_age_s", 0.0) * 1e9)


def recorded(obs: dict) -> dict:
    """What an episode file keeps of an observation: of stacked frames, only the newest."""
    return {**obs, "image": sim.newest_frame(obs["image"])} if "image" in obs else obs


def sim_state(env) -> dict[str, np.ndarray] | None:
    """The full simulator state, where the body is a simulation that exposes it (for exact replay)."""
    get_state = getattr(env.unwrapped, "get_state", None)
    return get_state() if callable(get_state) else None


def start_from(brain: Brain, path: Path, with_memory: bool = True) -> None:
    """Load a checkpoint's brain into a new run; one made for another model or body is refused by name.
    The new run keeps its own seed and learning rates: only weights, optimizer moments and, if
    `with_memory`, the memory carry over."""
    tensors, meta = load_checkpoint(path)
    try:
        brain.load_state(tensors, meta, same_run=False, with_memory=with_memory)
    except (RuntimeError, KeyError, ValueError) as exc:  # torch names the tensors whose shapes differ
        raise ConfigError(f"--init {path}: its brain does not fit this config and body: {str(exc)[:600]}") from None


# What may change between a run and its resumption: where and how fast it runs, how long, what it
# records, and how it reaches a robot. Anything else would make one run of two different agents.
RESUMABLE_CHANGES = ("run.steps", "run.out", "run.device", "run.torch_threads", "run.video", "run.checkpoint_every",
                     "run.record_episodes", "run.record_flush_every", "run.record_queue_steps",
                     "deliberation.deadline_s", "bridge.")


def resume_from(brain: Brain, cfg: Config, path: Path) -> dict:
    """Load the run's own checkpoint into `brain` -> its meta. A config that changed what the agent is
    (model, learner, memory, planner, seed...) is refused, naming the fields."""
    tensors, meta = load_checkpoint(path)
    if "config" in meta:  # checkpoints from before it was saved there cannot be checked
        changed = [key for key in changed_fields(meta["config"], to_dict(cfg)) if not key.startswith(RESUMABLE_CHANGES)]
        if changed:
            was, now = flat(meta["config"]), flat(to_dict(cfg))
            listed = ", ".join(f"{k} {was.get(k)!r} -> {now.get(k)!r}" for k in changed[:8])
            raise ConfigError(f"resuming {path.parent}: the config differs from the run's own in {listed}; a resumed "
                              f"run keeps its config (start a new run from this one with --init instead)")
    try:
        brain.load_state(tensors, meta)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ConfigError(f"resuming from {path}: its brain does not fit this config and body: {str(exc)[:600]}") from None
    return meta


def set_aside_episodes(folder: Path, first: int) -> None:
    """Rename the episode files from index `first` on to *.mcap.abandoned: a resumed run records those
    episodes again, and readers of the folder (train, export) see each episode once; nothing is deleted."""
    for path in sorted(folder.glob("episode_*.mcap")):
        index = path.stem.removeprefix("episode_")
        if index.isdigit() and int(index) >= first:
            target, n = path.with_name(path.name + ".abandoned"), 1
            while target.exists():  # set aside by an earlier resume too: keep both
                target, n = path.with_name(f"{path.name}.abandoned{n}"), n + 1
            path.rename(target)


def checkpoint(brain: Brain, counters: Counters, run_dir: Path) -> None:
    tensors, meta = brain.state()
    meta.update(env_step=counters.env_step, episode=counters.episode, wall_s=time.time() - counters.started,
                config=to_dict(brain.cfg))
    save_checkpoint(run_dir / CHECKPOINT, tensors, meta)
    if (run_dir / "metrics.csv").exists():
        plot_learning_curve(run_dir / "metrics.csv", run_dir / "learning_curve.png")
        plot_health(run_dir / "metrics.csv", run_dir / "health.png")


class Averages:
    """Running means of named scalars over one episode."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, float], prefix: str = "") -> None:
        for k, v in values.items():
            self.sums[prefix + k] = self.sums.get(prefix + k, 0.0) + v
            self.counts[prefix + k] = self.counts.get(prefix + k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}
