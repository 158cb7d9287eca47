"""Does learning offline from an earlier run's episodes speed up online learning? Side by side, in one run.

    python benchmarks/offline_pretrain.py                                  # about 25 minutes on 2 cores
    python benchmarks/offline_pretrain.py --episodes runs/earlier-run      # skip the source run

1. Source: an online run of the default task (reach) with another seed records its episodes (or
   `--episodes` names an earlier run).
2. Offline: `omniloop train` on those episodes, `--updates` learner steps.
3. Online, same seed, same steps, in turn: from the offline brain (`omniloop sim --init`, acting with
   it from the first step: run.seed_steps=0) and from scratch (the default seed phase of random
   actions first).
Reported: each one's return and success per episode, the env steps each needs to reach `--target`
success over 5 episodes, and their ratio (scratch / pretrained: above 1, pretraining pays). Results:
offline_pretrain.csv (per episode) and offline_pretrain.png in --out.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import numpy as np

from agent.cli import DEFAULT_CONFIG
from agent.config import load_config
from agent.metrics import read_metrics

WINDOW = 5  # episodes in the rolling success rate


def online(out: Path, steps: int, seed: int, overrides: list[str], init: Path | None = None) -> list[dict]:
    from agent.loop import run

    extra = ["run.seed_steps=0"] if init is not None else []
    cfg = load_config(DEFAULT_CONFIG if init is None else init.parent / "config.yaml",
                      [f"run.steps={steps}", f"run.seed={seed}", "run.video=false", *overrides, *extra])
    if out.exists():
        shutil.rmtree(out)
    run(cfg, out, show_progress=True, init=init)
    return read_metrics(out / "metrics.csv")


def offline(episodes: Path, out: Path, updates: int, overrides: list[str]) -> Path:
    from agent.offline import read_episodes, recorded_config, train_offline

    found = read_episodes(episodes)
    cfg = recorded_config(found, overrides)
    if out.exists():
        shutil.rmtree(out)
    train_offline(cfg, found, out, updates)
    return out / "checkpoint.safetensors"


def steps_to(rows: list[dict], target: float) -> int | None:
    """Env steps at the end of the first episode where the success rate over WINDOW episodes reaches target."""
    success = [float(r.get("success", 0.0)) for r in rows]
    for i in range(WINDOW - 1, len(rows)):
        if np.mean(success[i - WINDOW + 1:i + 1]) >= target:
            return int(rows[i]["env_step"])
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=Path, help="an earlier run's folder; default: record a source run first")
    parser.add_argument("--source-steps", type=int, default=3000, help="env steps of the source run")
    parser.add_argument("--updates", type=int, default=2000, help="offline learner steps")
    parser.add_argument("--steps", type=int, default=3000, help="env steps of each online run")
    parser.add_argument("--target", type=float, default=0.8, help="success rate over 5 episodes to reach")
    parser.add_argument("--seed", type=int, default=0, help="the online runs' seed (the source run uses seed + 1)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/offline_pretrain"))
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every run")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    source = args.episodes
    if source is None:
        console.print(f"source run: {args.source_steps} env steps, seed {args.seed + 1}")
        online(args.out / "source", args.source_steps, args.seed + 1, args.overrides)
        source = args.out / "source"
    console.print(f"offline: {args.updates} learner steps on the episodes of {source}")
    checkpoint = offline(source, args.out / "offline", args.updates, args.overrides)
    console.print("online from the offline brain")
    pretrained = online(args.out / "pretrained", args.steps, args.seed, args.overrides, init=checkpoint)
    console.print("online from scratch")
    scratch = online(args.out / "scratch", args.steps, args.seed, args.overrides)

    reach = {"pretrained": steps_to(pretrained, args.target), "scratch": steps_to(scratch, args.target)}
    table = Table(title=f"online learning from an offline brain against from scratch (seed {args.seed})")
    for column in ("start", "mean return, first 5 episodes", "mean return, last 5", "success, last 5",
                   f"env steps to {args.target:.0%} success"):
        table.add_column(column, justify="right")
    for name, rows in (("offline brain", pretrained), ("scratch", scratch)):
        key = "pretrained" if name == "offline brain" else "scratch"
        table.add_row(name, f"{np.mean([r['return'] for r in rows[:WINDOW]]):.2f}",
                      f"{np.mean([r['return'] for r in rows[-WINDOW:]]):.2f}",
                      f"{np.mean([float(r.get('success', 0.0)) for r in rows[-WINDOW:]]):.0%}",
                      "not reached" if reach[key] is None else str(reach[key]))
    console.print(table)
    if reach["pretrained"] and reach["scratch"]:
        console.print(f"speed-up: scratch needs {reach['scratch'] / reach['pretrained']:.2f}x the env steps")
    write_results(args.out, pretrained, scratch)
    console.print(f"results: {args.out / 'offline_pretrain.csv'}, {args.out / 'offline_pretrain.png'}")
    return 0


def write_results(out: Path, pretrained: list[dict], scratch: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(out / "offline_pretrain.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["start", "episode", "env_step", "return", "success"])
        for name, rows in (("offline brain", pretrained), ("scratch", scratch)):
            for r in rows:
                writer.writerow([name, r["episode"], r["env_step"], f"{r['return']:.4f}", r.get("success", "")])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, rows in (("from the offline brain", pretrained), ("from scratch", scratch)):
        steps = [r["env_step"] for r in rows]
        axes[0].plot(steps, [r["return"] for r in rows], label=name)
        success = [float(r.get("success", 0.0)) for r in rows]
        rolling = [np.mean(success[max(0, i - WINDOW + 1):i + 1]) for i in range(len(rows))]
        axes[1].plot(steps, rolling, label=name)
    axes[0].set_ylabel("episode return")
    axes[1].set_ylabel(f"success, last {WINDOW} episodes")
    for ax in axes:
        ax.set_xlabel("env steps (online)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "offline_pretrain.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
