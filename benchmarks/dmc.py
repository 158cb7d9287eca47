"""How fast does the agent learn a dm_control task, beside TD-MPC2's published numbers and a SAC run
on this machine? TD-MPC2's protocol: environment steps count the action repeat of 2, and every 10k
environment steps the agent plays 10 episodes without exploration noise.

    python benchmarks/dmc.py --task reacher-easy                     # our agent, 100k env steps, seed 0
    python benchmarks/dmc.py --task reacher-easy --baseline sac      # then SAC, same budget and protocol
    python benchmarks/dmc.py --task cartpole-swingup --seeds 0,1 --out runs/dmc/cartpole
    python benchmarks/dmc.py --task reacher-easy --pixels            # from 64x64 frames, 3 stacked
    python benchmarks/dmc.py --task reacher-easy --steps 20000 learner.batch_size=128   # any override

Our agent trains through `omniloop sim`'s own loop on configs/dmc.yaml (one set of hyperparameters
for every task) and is evaluated between episodes; SAC is stable-baselines3's, with its defaults,
on the same env adapter. Everything lands in --out: results.csv (one row per evaluation), curve.png
(mean and range over seeds), each run's own folder, and a printed table at 20k, 50k and 100k steps.
Our agent's run, stopped, resumes from its folder's last checkpoint (after its last evaluation):
run the same command again. SAC keeps no checkpoint: an unfinished SAC run starts over. One
process at a time may use an --out folder.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import sim
from agent import run_lock
from agent.brain import Brain
from agent.checkpoint import read_checkpoint_meta
from agent.config import load_config
from agent.evaluate import Evaluation, evaluate_agent, run_episodes
from agent.loop import CHECKPOINT, run

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "dmc.yaml"
FIELDS = ["agent", "task", "obs", "seed", "env_steps", "return", "return_std", "train_s", "eval_s"]
TABLE_STEPS = (20_000, 50_000, 100_000)
# Mean episode return after 100k env steps, 3 seeds (TD-MPC2, Hansen et al. 2024, per-task results).
PUBLISHED = {
    ("reacher-easy", "state"): {"TD-MPC2": 937, "SAC": 540, "DreamerV3": 872},
    ("cartpole-swingup", "state"): {"TD-MPC2": 839, "SAC": 835, "DreamerV3": 677},
    ("reacher-easy", "pixels"): {"TD-MPC2": 360},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="reacher-easy", help="dm_control DOMAIN-TASK")
    p.add_argument("--steps", type=int, default=100_000, help="environment steps (action repeat included)")
    p.add_argument("--seeds", default="0", help="comma-separated; run one after the other")
    p.add_argument("--eval-every", type=int, default=10_000, help="environment steps between evaluations")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--pixels", action="store_true", help="observe 64x64 camera frames (3 stacked), not state")
    p.add_argument("--baseline", choices=["sac"], help="also train this baseline, after our agent")
    p.add_argument("--skip-ours", action="store_true", help="run only the baseline")
    p.add_argument("--out", type=Path, help="results folder (default runs/dmc-TASK[-pixels])")
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for our agent")
    args = p.parse_args(argv)
    args.obs = "pixels" if args.pixels else "state"
    args.out = args.out or Path("runs") / f"dmc-{args.task}{'-pixels' if args.pixels else ''}"
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if args.steps < args.eval_every or args.eval_every <= 0:
        p.error(f"--steps ({args.steps}) must be at least --eval-every ({args.eval_every}) > 0")
    if args.skip_ours and not args.baseline:
        p.error("--skip-ours needs --baseline")
    return args


def env_overrides(args: argparse.Namespace) -> list[str]:
    """The env settings both agents share (env.* overrides on the command line included)."""
    out = [f"env.name=dmc:{args.task}"]
    if args.pixels:
        out += ["env.pixels=true", "env.proprio=false", "env.frame_stack=3"]
    return out + [o for o in args.overrides if o.startswith("env.")]


# ----------------------------------------------------------------------------------- results


class Results:
    """results.csv: one row per evaluation, appended as it happens (a stopped run keeps its rows)."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        if not path.exists():
            return
        with open(path, newline="") as f:
            text = f.read()
        reader = csv.DictReader(io.StringIO(text))
        raw = [(reader.line_num, row) for row in reader]
        cut = not text.endswith("\n")  # a kill while a row was written: that row is not whole
        if cut and raw:
            print(f"{path}: its last row was cut short (a kill?) and is dropped: {raw.pop()[1]}")
        for line, row in raw:
            try:
                self.rows.append(self._typed(row))
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}, line {line}: not a results row ({row}); fix or remove it") from None
        if cut:  # written again without it, so the next row starts on a line of its own
            self.rewrite()

    @staticmethod
    def _typed(row: dict) -> dict:
        out: dict = dict(row)
        for k in ("seed", "env_steps"):
            out[k] = int(row[k])
        for k in ("return", "return_std", "train_s", "eval_s"):
            out[k] = float(row[k])
        return out

    def done(self, agent: str, task: str, obs: str, seed: int) -> int:
        """The last env step already evaluated for this run (0 if none)."""
        steps = [r["env_steps"] for r in self.rows if (r["agent"], r["task"], r["obs"], r["seed"]) == (agent, task, obs, seed)]
        return max(steps, default=0)

    def drop(self, agent: str, task: str, obs: str, seed: int, after: int = -1) -> None:
        """Forget this run's rows past env step `after` (all of them by default), in the file too."""
        def keep(r: dict) -> bool:
            return (r["agent"], r["task"], r["obs"], r["seed"]) != (agent, task, obs, seed) or r["env_steps"] <= after

        if all(keep(r) for r in self.rows):
            return
        self.rows = [r for r in self.rows if keep(r)]
        self.rewrite()

    def rewrite(self) -> None:
        """The file from the rows kept, replaced in one step."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")  # a kill mid-write keeps every other run's rows
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows({k: r[k] for k in FIELDS} for r in self.rows)
        os.replace(tmp, self.path)

    def add(self, row: dict) -> None:
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({k: row[k] for k in FIELDS})
        self.rows.append(row)


class Evaluator:
    """Evaluates each time training passes a multiple of eval_every env steps, and records the result
    with the training time spent so far (evaluation time is kept apart)."""

    def __init__(self, args: argparse.Namespace, agent: str, seed: int, results: Results, repeat: int,
                 resumed: dict | None = None):
        """`resumed`: the meta of the checkpoint a run goes on from (its agent steps and wall_s)."""
        self.args, self.agent, self.seed, self.results, self.repeat = args, agent, seed, results, repeat
        mine = [r for r in results.rows if (r["agent"], r["task"], r["obs"], r["seed"]) == (agent, args.task, args.obs, seed)]
        start = resumed["env_step"] * repeat if resumed else 0
        # the next multiple of eval_every past both the rows kept and the checkpoint: steps the brain has
        # gone past are never evaluated late under their label
        self.next = max(results.done(agent, args.task, args.obs, seed), start - start % args.eval_every) + args.eval_every
        self.started = time.perf_counter()
        self.eval_s = 0.0
        if resumed:  # the checkpoint's wall clock counts the evaluations it went through: take them out
            self.train_s_before = resumed["wall_s"] - sum(r["eval_s"] for r in mine)
        else:
            self.train_s_before = max((r["train_s"] for r in mine), default=0.0)

    def __call__(self, agent_steps: int, evaluate: Callable[[], Evaluation]) -> None:
        env_steps = agent_steps * self.repeat
        while env_steps >= self.next and self.next <= self.args.steps:
            train_s = self.train_s_before + time.perf_counter() - self.started - self.eval_s
            print(f"[{self.agent} seed {self.seed}] {self.next:>7} env steps: evaluating "
                  f"{self.args.eval_episodes} episodes (the bar waits)", flush=True)  # minutes, on 2 cores
            start = time.perf_counter()
            ev = evaluate()
            spent = time.perf_counter() - start
            self.eval_s += spent
            self.results.add({"agent": self.agent, "task": self.args.task, "obs": self.args.obs, "seed": self.seed,
                              "env_steps": self.next, "return": ev.mean_return, "return_std": ev.std_return,
                              "train_s": train_s, "eval_s": spent})
            print(f"[{self.agent} seed {self.seed}] {self.next:>7} env steps: return {ev.mean_return:7.1f} "
                  f"± {ev.std_return:5.1f}   (training {train_s / 60:.1f} min, evaluation {spent:.0f} s)\n"
                  f"    each episode: {' '.join(f'{r:.0f}' for r in ev.returns)}", flush=True)  # a lost start shows
            self.next += self.args.eval_every


# --------------------------------------------------------------------------------- the agents


def train_ours(args: argparse.Namespace, seed: int, results: Results) -> None:
    run_dir = args.out / f"omniloop-seed{seed}"
    base = [*env_overrides(args), *args.overrides, f"run.seed={seed}", f"run.out={run_dir}"]
    cfg = load_config(args.config, base)
    eval_env = sim.make(cfg.env, seed=seed)
    repeat = eval_env.unwrapped.action_repeat
    per_episode = eval_env.unwrapped.env_steps_per_episode
    # our agent is evaluated between episodes, so each must end on an evaluation's step or before it
    if per_episode is not None and (args.eval_every % per_episode or per_episode % repeat):
        eval_env.close()
        raise SystemExit(f"--eval-every ({args.eval_every}) must be a multiple of dmc:{args.task}'s episode, "
                         f"{per_episode} env steps, and the episode one of the action repeat ({repeat})")
    cfg = load_config(args.config, [*base, f"run.steps={args.steps // repeat}"])
    # Resume from the checkpoint (configs/dmc.yaml writes one right after each evaluation); rows
    # evaluated after it are done again. Without a checkpoint the run starts over.
    resume = (run_dir / CHECKPOINT).exists()
    resumed = read_checkpoint_meta(run_dir / CHECKPOINT) if resume else None
    if resumed:
        results.drop("omniloop", args.task, args.obs, seed, after=resumed["env_step"] * repeat)
    else:
        results.drop("omniloop", args.task, args.obs, seed)
        if run_dir.exists():
            print(f"{run_dir} has no checkpoint: starting that run over")
            shutil.rmtree(run_dir)
    evaluator = Evaluator(args, "omniloop", seed, results, repeat, resumed)

    def after_episode(brain: Brain, agent_steps: int) -> None:
        evaluator(agent_steps, lambda: evaluate_agent(eval_env, brain, args.eval_episodes, seed))

    try:
        run(cfg, run_dir, resume=resume, after_episode=after_episode)
    finally:
        eval_env.close()


def train_sac(args: argparse.Namespace, seed: int, results: Results) -> None:
    """stable-baselines3's SAC with its defaults, on the same adapter, budget and evaluation."""
    import gymnasium
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    if results.done("sac", args.task, args.obs, seed) >= args.steps:
        return
    results.drop("sac", args.task, args.obs, seed)  # SAC cannot resume: an unfinished run starts over
    cfg = load_config(args.config, env_overrides(args))
    key = "image" if args.pixels else "proprio"

    def make() -> gymnasium.Env:
        env = sim.make(cfg.env, seed=seed)
        return gymnasium.wrappers.TransformObservation(env, lambda o: o[key], env.observation_space[key])

    env, eval_env = make(), make()
    repeat = env.unwrapped.action_repeat
    agent_steps = args.steps // repeat
    model = SAC("CnnPolicy" if args.pixels else "MlpPolicy", env, seed=seed, device="cpu", verbose=0,
                buffer_size=agent_steps)  # SB3's default of 1M would hold 1M transitions for nothing

    def evaluate() -> Evaluation:
        return run_episodes(eval_env, lambda o: model.predict(o, deterministic=True)[0], args.eval_episodes, seed)

    evaluator = Evaluator(args, "sac", seed, results, repeat)

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            evaluator(self.num_timesteps, evaluate)
            return True

    try:
        model.learn(total_timesteps=agent_steps, callback=Evaluate(), progress_bar=True)
    finally:
        env.close()
        eval_env.close()


# ------------------------------------------------------------------------------ table and plot


def summary(rows: list[dict], agent: str, steps: int) -> tuple[float, float, int] | None:
    """Mean and sample std (ddof 1, 0 for one seed) over seeds of the return at `steps`, and the number of seeds."""
    values = [r["return"] for r in rows if r["agent"] == agent and r["env_steps"] == steps]
    if not values:
        return None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, len(values)


def table(rows: list[dict], task: str, obs: str) -> str:
    agents = sorted({r["agent"] for r in rows}, key=lambda a: (a != "omniloop", a))
    present = {r["env_steps"] for r in rows}
    steps = [s for s in TABLE_STEPS if s in present] or sorted(present)[-1:]
    if not steps:
        return f"no evaluations of {task} ({obs}) yet"
    lines = [f"| {task} ({obs}) | " + " | ".join(f"{s // 1000}k" for s in steps) + " |",
             "| --- | " + " | ".join("---:" for _ in steps) + " |"]
    for agent in agents:
        cells = []
        for s in steps:
            m = summary(rows, agent, s)
            if m is None:
                cells.append("")
            else:  # the spread is across seeds: one seed has none
                cells.append(f"{m[0]:.0f} ± {m[1]:.0f} (n={m[2]})" if m[2] > 1 else f"{m[0]:.0f} (n=1)")
        lines.append(f"| {agent} (this machine) | " + " | ".join(cells) + " |")
    for name, value in PUBLISHED.get((task, obs), {}).items():
        lines.append(f"| {name} (published) | " + " | ".join(str(value) if s == 100_000 else "" for s in steps) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], task: str, obs: str, episodes: int, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), tight_layout=True)
    ax = fig.add_subplot()
    for agent in sorted({r["agent"] for r in rows}):
        steps = sorted({r["env_steps"] for r in rows if r["agent"] == agent})
        per = [[r["return"] for r in rows if r["agent"] == agent and r["env_steps"] == s] for s in steps]
        seeds = len({r["seed"] for r in rows if r["agent"] == agent})
        label = {"omniloop": "omniloop (MoE world model + MPPI)", "sac": "SAC (stable-baselines3)"}.get(agent, agent)
        line, = ax.plot(steps, [np.mean(v) for v in per], "o-", label=f"{label}, {seeds} seed(s)")
        ax.fill_between(steps, [min(v) for v in per], [max(v) for v in per], color=line.get_color(), alpha=0.2)
    for (name, value), style in zip(PUBLISHED.get((task, obs), {}).items(), ("--", ":", "-.")):
        ax.axhline(value, color="gray", ls=style, lw=1, label=f"{name} at 100k (published)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel(f"episode return (mean of {episodes} episodes, no exploration)")
    ax.set_ylim(0, 1000)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")  # a curve that stays low would hide under a fixed corner
    ax.set_title(f"dm_control {task}, from {obs}")
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:  # two processes appending to one results.csv would each drop the other's rows
        with run_lock.hold(args.out):
            results = Results(args.out / "results.csv")
            for seed in args.seed_list:
                if not args.skip_ours:
                    train_ours(args, seed, results)
                if args.baseline == "sac":
                    train_sac(args, seed, results)
    except run_lock.FolderInUse as exc:
        raise SystemExit(str(exc)) from None
    rows = [r for r in results.rows if r["task"] == args.task and r["obs"] == args.obs]
    plot(rows, args.task, args.obs, args.eval_episodes, args.out / "curve.png")
    print()
    print(table(rows, args.task, args.obs))
    print(f"\nwrote {args.out / 'results.csv'} and {args.out / 'curve.png'}")


if __name__ == "__main__":
    main()
