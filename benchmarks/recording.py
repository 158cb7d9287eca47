"""What recording episodes costs the loop, measured side by side in one run.

    python benchmarks/recording.py                       # about 5 minutes on 2 cores
    python benchmarks/recording.py --steps 400 --rounds 2 --out runs/bench/recording

1. The loop's own share: what `EpisodeRecorder.record` costs the loop's thread per step (it copies
   the step's arrays and queues them), against the loop's step time.
2. The whole loop: `omniloop sim` on the default task (reach: camera, joints, ears), planning and
   learning, with recording on and off, in alternation (`--rounds` runs of each, same seed). The
   writer thread encodes PNGs and JSON beside the learner, so this is what recording really costs.
   The step time is taken from the episodes after the seed phase (`steps_per_s` in metrics.csv).
3. The writer thread's CPU time per step (`record_writer_ms` in metrics.csv): on a machine whose
   cores the loop keeps busy, an upper bound of what recording can cost it, and one that run-to-run
   noise does not blur.

Target: the overhead is below 5 % of the step time. Results: recording.csv in --out.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from agent.cli import DEFAULT_CONFIG
from agent.config import load_config
from agent.episodes import StepRecord
from agent.metrics import read_metrics
from agent.recorder import EpisodeRecorder

METADATA = {"run": "bench", "seed": "0", "env": "reach", "code_version": "bench", "episode": "0"}


def reach_like_step(step: int, rng: np.random.Generator) -> StepRecord:
    """A step shaped like the default task's: 64x64 camera, 8 joints, 800 audio samples, MuJoCo state."""
    return StepRecord(
        step=step, time_ns=time.time_ns(),
        observation={"image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                     "proprio": rng.normal(size=8).astype(np.float32),
                     "audio": (0.1 * rng.normal(size=800)).astype(np.float32)},
        action_requested=rng.uniform(-1, 1, 2).astype(np.float32), action_sent=None,
        action_applied=rng.uniform(-1, 1, 2).astype(np.float32), reward=float(rng.random()),
        surprise={"total": 0.1, "latent": 0.05, "reward": 0.05},
        plan={"iterations": 4, "best_return": 1.0, "mean_return": 0.5, "think_ms": 20.0},
        sim_state={"time": np.array(0.1 * step), "qpos": rng.normal(size=4), "qvel": rng.normal(size=4),
                   "act": np.zeros(0)},
    )


def record_call_us(out: Path, steps: int = 500) -> float:
    """Median microseconds of one `record` call on the loop's thread."""
    rng = np.random.default_rng(0)
    records = [reach_like_step(i, rng) for i in range(steps)]
    times = []
    with EpisodeRecorder(out / "micro.mcap", METADATA, queue_steps=steps + 1) as recorder:
        for record in records:
            start = time.perf_counter()
            recorder.record(record)
            times.append(time.perf_counter() - start)
            time.sleep(0.002)  # the loop does other things between steps; the writer works meanwhile
    return 1e6 * statistics.median(times)


def loop_step_ms(out: Path, steps: int, record: bool, overrides: list[str]) -> tuple[float, float | None]:
    """Median ms per step of the whole loop over the episodes after the seed phase, and the writer
    thread's median CPU ms per step (None with recording off)."""
    from agent.loop import run

    cfg = load_config(DEFAULT_CONFIG, [f"run.steps={steps}", "run.seed_steps=100", "run.warmup_updates=50",
                                       "run.video=false", f"run.record_episodes={str(record).lower()}", *overrides])
    if out.exists():
        shutil.rmtree(out)
    run(cfg, out, show_progress=False)
    rows = read_metrics(out / "metrics.csv")
    learned = [r for r in rows if r["env_step"] > cfg.run.seed_steps + 50] or rows[-1:]
    writer = [r["record_writer_ms"] for r in learned if "record_writer_ms" in r]
    return (1000.0 * statistics.median(1.0 / r["steps_per_s"] for r in learned),
            statistics.median(writer) if writer else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="env steps per loop run")
    parser.add_argument("--rounds", type=int, default=3, help="loop runs with recording on, and as many off")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/recording"))
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for the loop runs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140)
    with console.status("record() on the loop's thread"):
        call_us = record_call_us(args.out)
    on, off, writer = [], [], []
    for r in range(args.rounds):
        for record in ((True, False) if r % 2 == 0 else (False, True)):  # alternate which goes first
            with console.status(f"round {r + 1}/{args.rounds}: the loop with recording {'on' if record else 'off'}"):
                ms, writer_ms = loop_step_ms(args.out / f"loop-{'on' if record else 'off'}", args.steps, record,
                                             args.overrides)
            (on if record else off).append(ms)
            if writer_ms is not None:
                writer.append(writer_ms)
            console.print(f"round {r + 1}: recording {'on ' if record else 'off'} {ms:.1f} ms per step")
    step_on, step_off = statistics.median(on), statistics.median(off)
    overhead = (step_on - step_off) / step_off
    writer_ms = statistics.median(writer)  # an upper bound of the cost: CPU the writer took from the loop's cores
    table = Table(title="what recording costs the loop (default task, planning and learning)")
    for column in ("record() per step", "share of the step", "writer CPU per step", "share of the step",
                   "step, recording off", "step, recording on", "overhead", "target"):
        table.add_column(column, justify="right")
    table.add_row(f"{call_us:.0f} µs", f"{call_us / 1000 / step_off:.2%}", f"{writer_ms:.2f} ms",
                  f"{writer_ms / step_off:.2%}", f"{step_off:.1f} ms", f"{step_on:.1f} ms", f"{overhead:+.1%}", "< 5 %")
    console.print(table)
    with open(args.out / "recording.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["record_call_us", "writer_cpu_ms", "step_off_ms", "step_on_ms", "overhead", "runs_off_ms",
                      "runs_on_ms"])
        out.writerow([f"{call_us:.1f}", f"{writer_ms:.3f}", f"{step_off:.2f}", f"{step_on:.2f}", f"{overhead:.4f}",
                      " ".join(f"{v:.2f}" for v in off), " ".join(f"{v:.2f}" for v in on)])
    console.print(f"results: {args.out / 'recording.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
