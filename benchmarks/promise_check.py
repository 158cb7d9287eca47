"""What the promise check is worth: one checkpoint, evaluated twice from the same starts, without the
check (deliberation.promise_window=0) and with it, side by side.

    python benchmarks/promise_check.py runs/dmc/reacher-easy/omniloop-seed1
    python benchmarks/promise_check.py runs/my-run --episodes 20 deliberation.promise_window=25
    python benchmarks/promise_check.py runs/my-run --first 10   # starts no evaluation during training used

The run folder's own config.yaml is used, with any overrides after it; a run made before the check
existed has none in its config, and gets the default window (10 steps) unless one is given. The
evaluation is the benchmarks' own (agent/evaluate.py): no exploration noise, starts that training
never saw, the evaluation seed being the run's. Prints each episode's return both ways and how many
steps System 1 took over.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import sim
from agent.brain import Brain
from agent.checkpoint import load_checkpoint
from agent.config import load_config
from agent.evaluate import Evaluation, evaluate_agent
from agent.loop import CHECKPOINT


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run folder with config.yaml and checkpoint.safetensors")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--first", type=int, default=0,
                   help="the first evaluation start; training's evaluations use starts 0 to 9 (dmc.py's 10 episodes)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for the run with the check")
    args = p.parse_intermixed_args(argv)  # overrides may come after --episodes
    if args.episodes < 1 or args.first < 0:
        p.error(f"--episodes must be >= 1 and --first >= 0, got {args.episodes} and {args.first}")
    for name in ("config.yaml", CHECKPOINT):
        if not (args.run / name).is_file():
            p.error(f"{args.run} has no {name}: not a run folder")
    return args


def evaluate(run: Path, overrides: list[str], episodes: int, first: int = 0) -> tuple[Evaluation, int]:
    """The checkpoint's evaluation under the run's config with `overrides`, and its takeover steps."""
    cfg = load_config(run / "config.yaml", overrides)
    torch.manual_seed(cfg.run.seed)
    env = sim.make(cfg.env, seed=cfg.run.seed)
    try:
        brain = Brain(cfg, sim.observation_spec(env.observation_space), env.action_space.shape[0])
        brain.load_state(*load_checkpoint(run / CHECKPOINT))
        takeovers = 0
        act = brain.act

        def counted(*a, **kw):
            nonlocal takeovers
            step = act(*a, **kw)
            takeovers += int(step.trace is not None and step.trace.takeover)
            return step

        brain.act = counted
        return evaluate_agent(env, brain, episodes, cfg.run.seed, first), takeovers
    finally:
        env.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    off, _ = evaluate(args.run, [*args.overrides, "deliberation.promise_window=0"], args.episodes, args.first)
    on, takeovers = evaluate(args.run, args.overrides, args.episodes, args.first)
    print(f"{args.run}: {args.episodes} evaluation episodes, the same starts both ways\n")
    starts = range(args.first, args.first + args.episodes)
    print("| episode | " + " | ".join(str(i) for i in starts) + " | mean |")
    print("| --- | " + " | ".join("---:" for _ in range(args.episodes + 1)) + " |")
    for name, ev in (("without the check", off), ("with the check", on)):
        print(f"| {name} | " + " | ".join(f"{r:.0f}" for r in ev.returns) + f" | {ev.mean_return:.1f} |")
    ratio = f" ({on.mean_return / off.mean_return:.3f}x)" if off.mean_return > 0 else ""
    print(f"\nSystem 1 took over for {takeovers} steps in all. Mean return with the check minus without: "
          f"{on.mean_return - off.mean_return:+.1f}{ratio}")


if __name__ == "__main__":
    main()
