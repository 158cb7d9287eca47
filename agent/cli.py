"""The `omniloop` command. One verb per use; `omniloop VERB --help` lists each verb's options."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from agent.config import Config, ConfigError, load_config, validate

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omniloop", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    simp = verbs.add_parser("sim", help="run the agent in simulation: it plans, acts and learns online",
                            description="Run the agent in a simulated body. It plans with its world model, acts, "
                                        "and learns online from its own prediction errors. Writes a run folder.")
    simp.add_argument("--config", type=Path, default=None,
                      help=f"YAML config (default: {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[1])})")
    simp.add_argument("--env", help="body: reach | gym:ID (e.g. gym:InvertedPendulum-v5) | dmc:DOMAIN-TASK "
                                    "(e.g. dmc:reacher-easy); sets env.name")
    simp.add_argument("--steps", type=int, help="environment steps in total; sets run.steps")
    simp.add_argument("--seed", type=int, help="sets run.seed")
    simp.add_argument("--out", type=Path, help="run folder (default runs/<timestamp>); sets run.out")
    simp.add_argument("--device", choices=["cpu", "cuda"], help="sets run.device")
    simp.add_argument("--resume", type=Path, metavar="RUN_DIR",
                      help="continue the run in RUN_DIR from its checkpoint, with its saved config "
                           "(options and overrides given here still apply, e.g. a larger --steps)")
    simp.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    simp.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                      help="set any config field, e.g. planner.horizon=5 learner.batch_size=64")
    return parser


def sim_config(args: argparse.Namespace) -> tuple[Config, Path]:
    if args.resume is not None:
        saved = args.resume / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {args.resume}: no config.yaml there, so it is not a run folder")
        cfg = load_config(args.config or saved, args.overrides)
    else:
        path = args.config if args.config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
        cfg = load_config(path, args.overrides)
    # the named options win over the file and the overrides; they are typed already, so set them as they are
    for option, section, name in (("env", cfg.env, "name"), ("steps", cfg.run, "steps"), ("seed", cfg.run, "seed"),
                                  ("device", cfg.run, "device"), ("out", cfg.run, "out")):
        value = getattr(args, option)
        if value is not None:
            setattr(section, name, str(value) if option == "out" else value)
    if args.resume is not None:
        cfg.run.out = str(args.resume)
    elif not cfg.run.out:
        cfg.run.out = str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    validate(cfg)
    return cfg, Path(cfg.run.out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verb == "sim":
        try:
            cfg, run_dir = sim_config(args)
        except ConfigError as exc:
            print(f"omniloop sim: error: {exc}", file=sys.stderr)
            return 2
        from agent.checkpoint import CheckpointError  # torch and MuJoCo load only once the config is good
        from agent.loop import run

        if args.resume is not None and not (run_dir / "checkpoint.safetensors").is_file():
            print(f"omniloop sim: error: --resume {run_dir}: no checkpoint.safetensors there", file=sys.stderr)
            return 2
        print(f"run folder: {run_dir}")
        try:
            rows = run(cfg, run_dir, resume=args.resume is not None, show_progress=not args.no_progress)
        except (ConfigError, FileExistsError, CheckpointError) as exc:
            print(f"omniloop sim: error: {exc}", file=sys.stderr)
            return 2
        if rows:
            tail = rows[-10:]
            ret = sum(r["return"] for r in tail) / len(tail)
            ok = [r["success"] for r in tail if "success" in r]
            success = f", success {sum(ok) / len(ok):.0%}" if ok else ""
            print(f"done: {rows[-1]['env_step']} env steps; last {len(tail)} episodes: "
                  f"return {ret:.2f}{success}. Results in {run_dir}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
