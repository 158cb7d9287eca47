"""How fast does the default agent learn to reach? Success and return after each stage of training,
beside a uniformly random policy measured in the same run, and the env steps per second of the whole
loop (planning, acting, recording and learning).

    python benchmarks/learn_reach.py                       # 5k, 10k, 20k env steps (about 75 min on 2 cores)
    python benchmarks/learn_reach.py --stages 1000,2000    # a quick look
    python benchmarks/learn_reach.py planner.horizon=5     # any config override

Training runs through `omniloop sim`'s own loop, resuming the run folder from one stage to the next;
a run stopped between stages, or given later stages, goes on from its folder (--out) where it
stopped: the stages in its results.csv are kept, not run again. After each stage the checkpoint is
evaluated on episodes whose starts training never saw, with the planner committing to its plan
without exploration noise. Writes results.csv (after every stage) and learn_reach.png into the run
folder and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import sim
from agent.brain import Brain
from agent.checkpoint import load_checkpoint, read_checkpoint_meta
from agent.cli import DEFAULT_CONFIG
from agent.config import load_config
from agent.evaluate import Evaluation, evaluate_agent, evaluate_random
from agent.loop import CHECKPOINT, run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", default="5000,10000,20000", help="env steps at which to evaluate, comma-separated")
    p.add_argument("--eval-episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs") / time.strftime("bench_learn_reach-%Y%m%d-%H%M%S"))
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args(argv)
    try:
        args.stages = sorted({int(s) for s in args.stages.split(",")})
    except ValueError:
        p.error(f"--stages must be env step counts separated by commas, got {args.stages!r}")
    if args.stages[0] < 1:
        p.error(f"--stages must be positive, got {args.stages}")
    return args


def evaluate_checkpoint(cfg, run_dir: Path, episodes: int, seed: int) -> Evaluation:
    env = sim.make(cfg.env, seed=seed)
    try:
        brain = Brain(cfg, sim.observation_spec(env.observation_space), env.action_space.shape[0])
        brain.load_state(*load_checkpoint(run_dir / CHECKPOINT))
        return evaluate_agent(env, brain, episodes, seed)
    finally:
        env.close()


def plot(rows: list[dict], random: Evaluation, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4), tight_layout=True)
    steps = [r["env_step"] for r in rows]
    for i, (key, label) in enumerate((("success", "success rate"), ("return", "episode return"))):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.plot(steps, [r[key] for r in rows], "o-", label="omniloop (MoE world model + MPPI)")
        ax.axhline(random.success_rate if key == "success" else random.mean_return, color="gray", ls="--",
                   label="random policy")
        ax.set_xlabel("env steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if key == "success":
            ax.set_ylim(-0.02, 1.02)
            ax.axhline(0.9, color="green", ls=":", label="target 90 %")
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("omniloop/Reach-v0: learning to reach")
    fig.savefig(path, dpi=110)


def finished_stages(run_dir: Path) -> list[dict]:
    """The rows of the stages an earlier invocation finished in this run folder (none for a new one)."""
    path = run_dir / "results.csv"
    if not path.exists():
        return []
    if not (run_dir / CHECKPOINT).exists():
        raise SystemExit(f"{path} exists but {run_dir / CHECKPOINT} does not: nothing to resume from")
    try:
        with open(path, newline="") as f:
            rows = [{k: (int(v) if k == "env_step" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]
    except (ValueError, TypeError) as exc:  # a number that is not one, or a row cut short
        raise SystemExit(f"{path} is not a learn_reach results file ({exc}); move it away to start over") from None
    if not rows or "env_step" not in rows[0] or "train_minutes" not in rows[0]:
        raise SystemExit(f"{path} is not a learn_reach results file (no env_step and train_minutes rows); "
                         "move it away to start over")
    return rows


def write_results(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    stages, run_dir = args.stages, args.out
    rows = finished_stages(run_dir)
    done = rows[-1]["env_step"] if rows else 0
    # a sitting stopped inside a stage leaves the checkpoint past the last evaluated stage
    trained = read_checkpoint_meta(run_dir / CHECKPOINT)["env_step"] if (run_dir / CHECKPOINT).exists() else 0
    if any(s < max(done, trained) and s not in {r["env_step"] for r in rows} for s in stages):
        raise SystemExit(f"{run_dir} has trained to {max(done, trained)} env steps: stages below that can no "
                         f"longer be evaluated ({args.stages})")
    base = [*args.overrides, f"run.seed={args.seed}", f"run.out={run_dir}"]
    cfg = load_config(args.config, base)
    env = sim.make(cfg.env, seed=args.seed)
    random = evaluate_random(env, args.eval_episodes, args.seed)
    env.close()
    print(f"random policy: return {random.mean_return:.2f}, success {random.success_rate:.0%}")

    for steps in (s for s in stages if s > done):
        cfg = load_config(args.config, [*base, f"run.steps={steps}"])
        run(cfg, run_dir, resume=(run_dir / CHECKPOINT).exists())
        # the loop's own clock, kept across resumed sittings: training alone, evaluations are outside it
        train_seconds = read_checkpoint_meta(run_dir / CHECKPOINT)["wall_s"]
        ev = evaluate_checkpoint(cfg, run_dir, args.eval_episodes, args.seed)
        rows.append({"env_step": steps, "return": ev.mean_return, "return_std": ev.std_return,
                     "success": ev.success_rate, "random_return": random.mean_return,
                     "random_success": random.success_rate, "loop_steps_per_s": steps / train_seconds,
                     "train_minutes": train_seconds / 60})
        print(f"{steps} env steps: success {ev.success_rate:.0%}, return {ev.mean_return:.2f} "
              f"(random {random.success_rate:.0%}, {random.mean_return:.2f}); "
              f"loop {steps / train_seconds:.2f} env steps/s")
        write_results(rows, run_dir / "results.csv")  # after every stage: what a stopped run resumes from

    plot(rows, random, run_dir / "learn_reach.png")
    print("\n| env steps | success | return | random success | random return | return vs random | loop env steps/s |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['env_step']} | {r['success']:.0%} | {r['return']:.1f} ± {r['return_std']:.1f} | "
              f"{r['random_success']:.0%} | {r['random_return']:.1f} | {r['return'] / r['random_return']:.2f}x | "
              f"{r['loop_steps_per_s']:.2f} |")
    print(f"\nwrote {run_dir / 'results.csv'} and {run_dir / 'learn_reach.png'}")


if __name__ == "__main__":
    main()
