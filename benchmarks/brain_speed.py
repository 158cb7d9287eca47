"""What one decision and one learner step of the agent cost, on every device this machine has, and
for its MoE world model beside the dense twin with the same active parameters, side by side in one
run. No simulator is needed: observations are random, shaped like the reach task's (64x64x3 image,
8 proprio, 800 audio samples, 2 actions), or like a dm_control task's observation: --state N for
its state vector, --pixels K for K stacked 64x64 frames.

    python benchmarks/brain_speed.py                                        # the default config
    python benchmarks/brain_speed.py --config configs/dmc.yaml --state 6    # reacher-easy from state
    python benchmarks/brain_speed.py --config configs/dmc.yaml --pixels 3   # ... from 3 stacked frames
    python benchmarks/brain_speed.py planner.samples=512                    # any override
    python benchmarks/brain_speed.py --config configs/dmc.yaml --state 5 --versus worldmodel.value_heads=0

Prints, per device and model: ms per plan (MPPI at the configured search size), ms per learner
update, and the env steps per second of the whole brain at one plan and one update per step.
`--versus KEY=VALUE` adds the MoE model with that override (repeatable) beside the others. The
brains take turns, a few calls each, until each has its repeats: a VM whose speed drifts from one
minute to the next then slows them all alike, and their ratios hold where their times do not. First,
the CPU's own measured limits for the kinds of work a step is made of (a large matmul, the matmul of
one 256-candidate layer, an elementwise SiLU over it), so that numbers from two machines of the same
nominal size can be told apart: the same code ran at twice the speed on one 2-core VM as on another.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from agent.brain import Brain
from agent.cli import DEFAULT_CONFIG
from agent.config import load_config, parse_override

REACH_SPEC = {"image": ((64, 64, 3), "uint8"), "proprio": ((8,), "float32"), "audio": ((800,), "float32")}


def random_observation(spec: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for key, (shape, dtype) in spec.items():
        if dtype == "uint8":
            out[key] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            out[key] = (0.1 if key == "audio" else 1.0) * rng.normal(size=shape).astype(np.float32)
    return out


def synthetic_brain(config, overrides: list[str], spec: dict, device: str, steps: int = 2000) -> Brain:
    cfg = load_config(config, [*overrides, f"run.device={device}"])
    brain = Brain(cfg, spec, action_dim=2)
    rng = np.random.default_rng(0)
    for t in range(steps):
        last = t % 50 == 49
        brain.memory.add(random_observation(spec, rng), None if last else rng.uniform(-1, 1, 2).astype(np.float32),
                         float(rng.random()))
    brain.fit_input_statistics()
    return brain


def timed(fn, repeats: int) -> float:
    """Median milliseconds of `fn` over `repeats` calls, after two warm-up calls."""
    return taking_turns({"": fn}, repeats)[""]


def taking_turns(fns: dict[str, Callable[[], object]], repeats: int, turn: int = 5) -> dict[str, float]:
    """Median milliseconds of each function over `repeats` calls, after two warm-up calls each; the
    functions take turns of `turn` calls, so a drift in the machine's speed reaches all of them."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn(), fn()
    for done in range(0, repeats, turn):
        for name, fn in fns.items():
            for _ in range(min(turn, repeats - done)):
                start = time.perf_counter()
                fn()
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                samples[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(times) for name, times in samples.items()}


def machine_limits(repeats: int = 200) -> dict[str, float]:
    """What this CPU does at torch's thread count, measured now: GFLOP/s of a 1024x1024
    matmul, and µs of one (256, 128) x (128, 128) layer and of a SiLU over its (256, 128) output."""
    gen = torch.Generator().manual_seed(0)
    big, x, w, b = (torch.randn(*s, generator=gen) for s in ((1024, 1024), (256, 128), (128, 128), (128,)))
    return {"matmul_gflops": 2 * 1024**3 / (1e-3 * timed(lambda: big @ big, max(5, repeats // 20))) / 1e9,
            "layer_us": 1e3 * timed(lambda: torch.addmm(b, x, w), repeats),
            "silu_us": 1e3 * timed(lambda: torch.nn.functional.silu(x), repeats)}


def versus_variants(config, overrides: list[str], versus: list[str]) -> dict[str, list[str]]:
    """The timed world models: MoE, its dense twin, and MoE with each `--versus` override.

    A variant whose config equals an earlier one's (an override given twice, or one that restates
    the config) would time one model twice under two names, and an override of
    `worldmodel.moe.dense` would time a dense model under an "MoE, ..." label: both are refused.
    """
    variants = {"MoE": ["worldmodel.moe.dense=false"], "dense twin": ["worldmodel.moe.dense=true"]}
    configs = {name: load_config(config, [*overrides, *extra]) for name, extra in variants.items()}
    for override in versus:
        if parse_override(override)[0] == "worldmodel.moe.dense":
            raise ValueError(f"--versus {override}: the dense twin is timed already; --versus varies the MoE model")
        extra = ["worldmodel.moe.dense=false", override]
        cfg = load_config(config, [*overrides, *extra])
        same = next((name for name, other in configs.items() if other == cfg), None)
        if same is not None:
            raise ValueError(f"--versus {override}: that is the config of {same!r} already, timed once")
        variants[f"MoE, {override}"], configs[f"MoE, {override}"] = extra, cfg
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    observed = parser.add_mutually_exclusive_group()
    observed.add_argument("--state", type=int, metavar="N", help="observe only an N-dim state vector (dm_control)")
    observed.add_argument("--pixels", type=int, metavar="K", help="observe only K stacked 64x64 RGB frames")
    parser.add_argument("--versus", action="append", default=[], metavar="KEY=VALUE",
                        help="also time the MoE model with this override, taking turns with the others")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    for flag in ("state", "pixels"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    try:
        variants = versus_variants(args.config, args.overrides, args.versus)
    except ValueError as error:  # ConfigError too: a bad key or value in an override
        parser.error(str(error))
    spec = REACH_SPEC
    if args.state:
        spec = {"proprio": ((args.state,), "float32")}
    elif args.pixels:
        spec = {"image": ((64, 64, 3 * args.pixels), "uint8")}
    limits = machine_limits()
    print(f"this CPU ({torch.get_num_threads()} threads): 1024x1024 matmul {limits['matmul_gflops']:.0f} GFLOP/s, "
          f"one 256x128x128 layer {limits['layer_us']:.0f} µs, SiLU over 256x128 {limits['silu_us']:.0f} µs")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        plans, updates = {}, {}
        for model, extra in variants.items():
            brain = synthetic_brain(args.config, [*args.overrides, *extra], spec, device)
            z = brain.encode({k: brain.memory.obs[k][0] for k in spec})
            brain.deliberation.cfg.fast_path = False  # time the search itself
            brain.deliberation.cfg.deadline_s = 1e9
            plans[model] = lambda brain=brain, z=z: brain.act(z, explore=True)
            updates[model] = lambda brain=brain: brain.learn(1)
        plan_ms, update_ms = taking_turns(plans, args.repeats), taking_turns(updates, args.repeats)
        name = torch.cuda.get_device_name() if device == "cuda" else f"{torch.get_num_threads()} CPU threads"
        for model in variants:
            rate = 1e3 / (plan_ms[model] + update_ms[model])
            rows.append((device, model, plan_ms[model], update_ms[model], rate))
            print(f"{device} ({name}), {model}: plan {plan_ms[model]:.1f} ms, update {update_ms[model]:.1f} ms, "
                  f"{rate:.1f} brain steps/s")
    print("\n| device | world model | plan ms | update ms | brain steps/s | vs cpu MoE |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for device, model, plan_ms, update_ms, rate in rows:
        print(f"| {device} | {model} | {plan_ms:.1f} | {update_ms:.1f} | {rate:.1f} | {rate / rows[0][4]:.2f}x |")


if __name__ == "__main__":
    main()
