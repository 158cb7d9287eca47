"""The `omniloop` command. One verb per use; `omniloop VERB --help` lists each verb's options.

    omniloop sim            the agent in a simulated body: it plans, acts and learns online
    omniloop robot          the same loop, driving a robot through `omniloop robot-server`
    omniloop robot-server   serve a robot (a driver, its sensors, safety) to one agent over ZeroMQ
    omniloop keys generate  CURVE key pairs for the bridge
    omniloop episodes ls    the recorded episodes in a folder: length, return, success, control rate
    omniloop episodes info  one episode file in full: metadata, channels and their message counts
    omniloop episodes export  a folder of episodes as a LeRobot v3.0 dataset (parquet, MP4, meta/)
    omniloop replay         replay an episode: by its states or actions in simulation, as a video, in Rerun
    omniloop train          learn offline from recorded episodes; `omniloop sim --init` goes on online
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

from agent.config import Config, ConfigError, from_dict, load_config, parse_override, set_dotted, validate

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIGS / "default.yaml"
ROBOT_CONFIG = CONFIGS / "robot.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omniloop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    simp = verbs.add_parser("sim", help="run the agent in simulation: it plans, acts and learns online",
                            description="Run the agent in a simulated body. It plans with its world model, acts, "
                                        "and learns online from its own prediction errors. Writes a run folder.")
    add_run_options(simp, DEFAULT_CONFIG)
    simp.add_argument("--env", help="body: reach | gym:ID (e.g. gym:InvertedPendulum-v5) | dmc:DOMAIN-TASK "
                                    "(e.g. dmc:reacher-easy); sets env.name")

    robot = verbs.add_parser("robot", help="run the agent loop on a robot served by `omniloop robot-server`",
                             description="Run the agent loop against a remote robot: the same loop and run folder "
                                         "as `omniloop sim`, with reward from the config's objective.")
    add_run_options(robot, ROBOT_CONFIG)
    robot.add_argument("--connect", metavar="ENDPOINT", help="the server, e.g. tcp://robot.local:5555; sets bridge.connect")
    robot.add_argument("--server-key", metavar="FILE", help="the server's public key (server.key); turns CURVE on")
    robot.add_argument("--client-key", metavar="FILE",
                       help="this agent's secret key (default: client.key_secret beside --server-key)")
    robot.add_argument("--clear-fault", action="store_true", help="re-arm a robot whose fault is latched")

    server = verbs.add_parser("robot-server", help="serve a robot to one agent over ZeroMQ, with safety",
                              description="Run a robot's driver at its control rate and serve it to one agent. "
                                          "Safety (watchdog, limits, latched faults) lives here, not in the agent.")
    server.add_argument("--driver", help="sim, or a driver class as module:Class; sets driver")
    server.add_argument("--bind", metavar="ENDPOINT", help="default tcp://127.0.0.1:5555; sets bind")
    server.add_argument("--keys", type=Path, metavar="DIR", help="CURVE keys from `omniloop keys generate DIR`")
    server.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without keys")
    server.add_argument("--lockstep", action="store_true", help="tick as soon as a command arrives (benchmarks)")
    server.add_argument("--log", type=Path, metavar="FILE",
                        help="JSON-lines log of every command and applied action (default runs/robot-server/<time>.jsonl)")
    server.add_argument("--config", type=Path, help="YAML server config (driver, driver_options, camera, microphone, safety)")
    server.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="set any server config field, e.g. driver_options.task=reach safety.max_delta=0.2")

    keys = verbs.add_parser("keys", help="CURVE keys for the bridge")
    keys_verbs = keys.add_subparsers(dest="keys_verb", required=True)
    gen = keys_verbs.add_parser("generate", help="a server key pair and a client key pair, with the client allowed")
    gen.add_argument("dir", type=Path)
    gen.add_argument("--client", default="client", help="the client pair's name (a second agent gets its own)")

    episodes = verbs.add_parser("episodes", help="recorded episodes: list them, inspect one")
    episodes_verbs = episodes.add_subparsers(dest="episodes_verb", required=True)
    ls = episodes_verbs.add_parser("ls", help="the episodes in a folder (a run folder or its episodes/), one line each")
    ls.add_argument("dir", type=Path)
    info = episodes_verbs.add_parser("info", help="one episode file: metadata, attachments, channels, timing")
    info.add_argument("file", type=Path)
    export = episodes_verbs.add_parser("export", help="a folder of episodes as a dataset others train on",
                                       description="Write the episodes of DIR (a run folder or its episodes/) "
                                                   "as a LeRobot v3.0 dataset in OUT: parquet data, an MP4 "
                                                   "of the camera, meta/info.json with features and fps.")
    export.add_argument("dir", type=Path)
    export.add_argument("out", type=Path)
    export.add_argument("--format", required=True, choices=["lerobot"])
    export.add_argument("--task", help="the task of steps without an instruction (default: the env's name)")
    export.add_argument("--fps", type=int, help="frames per second (default: the episodes' control rate)")

    replay = verbs.add_parser("replay", help="replay a recorded episode",
                              description="Replay an episode. states: set every recorded simulator state, render, "
                                          "and compare with the recording (it must be exact). actions: apply the "
                                          "recorded actions open loop from the recorded start, and report how the "
                                          "simulation drifts from the recording, step by step. video: an MP4 of "
                                          "the camera, the world model's picture of each moment, and surprise, "
                                          "reward and think time with a moving cursor. view: every channel in "
                                          "the Rerun viewer, on the step and capture-time timelines. robot: "
                                          "through the bridge, move slowly to the episode's start pose, replay its "
                                          "actions at the recorded rate with every limit of the server, and go back "
                                          "to rest (also on Ctrl-C).")
    replay.add_argument("file", type=Path)
    replay.add_argument("--mode", required=True, choices=["states", "actions", "video", "view", "robot"])
    replay.add_argument("--out", type=Path, metavar="FILE",
                        help="states, actions: a CSV of the per-step differences; video: the MP4 (required)")
    replay.add_argument("--fps", type=float, help="video: frames per second (default: the episode's control rate)")
    replay.add_argument("--save", type=Path, metavar="FILE.rrd", help="view: save a Rerun recording instead of showing it")
    replay.add_argument("--viewer", metavar="URL", help="view: a running Rerun viewer's gRPC URL (default: spawn one)")
    replay.add_argument("--connect", metavar="ENDPOINT", help="robot: the robot server, e.g. tcp://robot.local:5555")
    replay.add_argument("--server-key", type=Path, metavar="FILE", help="robot: the server's public key; turns CURVE on")
    replay.add_argument("--client-key", type=Path, metavar="FILE",
                        help="robot: this agent's secret key (default: client.key_secret beside --server-key)")
    replay.add_argument("--ramp-s", type=float, default=3.0, help="robot: seconds to glide to the start pose and back")
    replay.add_argument("--tolerance", type=float, default=0.05,
                        help="robot: how close every joint must come to the start pose (rad or m)")

    train = verbs.add_parser("train", help="learn offline from recorded episodes, before any online step",
                             description="Fill the replay memory with recorded episodes and take learner steps on "
                                         "it: world model, value and policy, as online. Writes a run folder whose "
                                         "checkpoint `omniloop sim --init` starts from.")
    train.add_argument("--episodes", type=Path, required=True, metavar="DIR", help="a run folder or a folder of episodes")
    train.add_argument("--updates", type=int, default=2000, help="learner steps (default 2000)")
    train.add_argument("--out", type=Path, help="run folder (default runs/<timestamp>-offline)")
    train.add_argument("--init", type=Path, metavar="CHECKPOINT",
                       help="start the learner from this checkpoint's weights and optimizer moments (its memory is "
                            "not used: the episodes fill it), with the config.yaml beside it unless --config is given; "
                            "e.g. more updates on a finished run's own episodes")
    train.add_argument("--config", type=Path,
                       help="YAML config (default: the one beside --init, else the one the episodes were recorded with)")
    train.add_argument("--device", choices=["cpu", "cuda"], help="sets run.device")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="set any config field, e.g. learner.batch_size=64")
    return parser


def add_run_options(p: argparse.ArgumentParser, default_config: Path) -> None:
    p.add_argument("--config", type=Path, default=None,
                   help=f"YAML config (default: {default_config.relative_to(default_config.parents[1])})")
    p.add_argument("--steps", type=int, help="agent steps (decisions) in total, each env.action_repeat env steps (2 on dmc:); sets run.steps")
    p.add_argument("--seed", type=int, help="sets run.seed")
    p.add_argument("--out", type=Path, help="run folder (default runs/<timestamp>); sets run.out")
    p.add_argument("--device", choices=["cpu", "cuda"], help="sets run.device")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its checkpoint, with its saved config "
                        "(options and overrides given here still apply, e.g. a larger --steps)")
    p.add_argument("--init", type=Path, metavar="CHECKPOINT",
                   help="start a new run from this checkpoint's brain (e.g. from `omniloop train`): its weights and "
                        "its memory, with the counters at zero, and the config.yaml beside it unless --config is "
                        "given; add run.seed_steps=0 to act with it from the first step")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="set any config field, e.g. planner.horizon=5 learner.batch_size=64")
    p.set_defaults(default_config=default_config)


def run_config(args: argparse.Namespace) -> tuple[Config, Path]:
    """The config of `omniloop sim` or `omniloop robot`: file, overrides, then the named options."""
    if args.resume is not None:
        saved = args.resume / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume {args.resume}: no config.yaml there, so it is not a run folder")
        cfg = load_config(args.config or saved, args.overrides)
    elif args.init is not None and args.config is None and (args.init.parent / "config.yaml").is_file():
        cfg = load_config(args.init.parent / "config.yaml", args.overrides)  # the brain's own model and body
        if not any(item.startswith("run.out=") for item in args.overrides):
            cfg.run.out = None  # the checkpoint's folder is not this run's
    else:
        default = args.default_config
        cfg = load_config(args.config if args.config is not None else (default if default.is_file() else None),
                          args.overrides)
    # the named options win over the file and the overrides; they are typed already, so set them as they are
    named = [("steps", cfg.run, "steps"), ("seed", cfg.run, "seed"), ("device", cfg.run, "device"), ("out", cfg.run, "out")]
    if args.verb == "sim":
        named.append(("env", cfg.env, "name"))
    else:
        named += [("connect", cfg.bridge, "connect"), ("server_key", cfg.bridge, "server_key"),
                  ("client_key", cfg.bridge, "client_key")]
        if args.server_key and not args.client_key:
            cfg.bridge.client_key = str(Path(args.server_key).with_name("client.key_secret"))
    for option, section, name in named:
        value = getattr(args, option)
        if value is not None:
            setattr(section, name, str(value) if option in ("out", "server_key", "client_key") else value)
    if args.resume is not None:
        cfg.run.out = str(args.resume)
    elif not cfg.run.out:
        cfg.run.out = str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    validate(cfg)
    return cfg, Path(cfg.run.out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verb in ("sim", "robot"):
        return run_agent(args)
    if args.verb == "robot-server":
        return robot_server(args)
    if args.verb == "keys":
        return generate_keys(args)
    if args.verb == "episodes":
        from agent.episodes_cli import episodes_command

        return episodes_command(args)
    if args.verb == "replay":
        from agent.episodes_cli import replay_command

        return replay_command(args)
    if args.verb == "train":
        return train_offline(args)
    return 2


def run_agent(args: argparse.Namespace) -> int:
    verb = f"omniloop {args.verb}"
    try:
        cfg, run_dir = run_config(args)
    except ConfigError as exc:
        print(f"{verb}: error: {exc}", file=sys.stderr)
        return 2
    from agent.checkpoint import CheckpointError  # torch and MuJoCo load only once the config is good
    from agent.loop import run
    from robot_bridge.client import RobotFault

    if args.resume is not None and not (run_dir / "checkpoint.safetensors").is_file():
        print(f"{verb}: error: --resume {run_dir}: no checkpoint.safetensors there", file=sys.stderr)
        return 2
    if args.init is not None and (args.resume is not None or not args.init.is_file()):
        why = "--init starts a new run; --resume goes on with one" if args.resume else f"{args.init} is not a file"
        print(f"{verb}: error: --init: {why}", file=sys.stderr)
        return 2
    print(f"run folder: {run_dir}")
    try:
        rows = run(cfg, run_dir, resume=args.resume is not None, show_progress=not args.no_progress, body=args.verb,
                   clear_fault=getattr(args, "clear_fault", False),  # a one-off permission: not saved in config.yaml
                   init=args.init)
    except (ConfigError, FileExistsError, CheckpointError) as exc:
        print(f"{verb}: error: {exc}", file=sys.stderr)
        return 2
    except (ConnectionError, RobotFault, FileNotFoundError) as exc:  # the robot, its link or its keys
        print(f"{verb}: error: {exc}", file=sys.stderr)
        return 1
    if rows:
        tail = rows[-10:]
        ret = sum(r["return"] for r in tail) / len(tail)
        ok = [r["success"] for r in tail if "success" in r]
        success = f", success {sum(ok) / len(ok):.0%}" if ok else ""
        print(f"done: {rows[-1]['env_step']} agent steps; last {len(tail)} episodes: "
              f"return {ret:.2f}{success}. Results in {run_dir}")
    return 0


def train_offline(args: argparse.Namespace) -> int:
    from agent import run_lock
    from agent.checkpoint import CheckpointError
    from agent.episodes import EpisodeError
    from agent.offline import read_episodes, recorded_config, train_offline as train

    try:
        if args.updates < 1:
            raise ConfigError(f"--updates must be at least 1, got {args.updates}")
        if args.init is not None and not args.init.is_file():
            raise ConfigError(f"--init {args.init} is not a file")
        episodes = read_episodes(args.episodes)
        if args.config is not None:
            cfg = load_config(args.config, args.overrides)
        elif args.init is not None and (args.init.parent / "config.yaml").is_file():
            cfg = load_config(args.init.parent / "config.yaml", args.overrides)  # the brain's own model
        else:  # the episodes' own config: the model then fits the body that recorded them
            cfg = recorded_config(episodes, args.overrides)
        if args.device is not None:
            cfg.run.device = args.device
        out = args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S-offline")
        cfg.run.out = str(out)
        validate(cfg)
        with run_lock.hold(out):  # one process per run folder, as for `sim`
            if (out / "checkpoint.safetensors").exists() or (out / "metrics.csv").exists():
                raise ConfigError(f"{out} already holds a run (its checkpoint or metrics.csv); choose another --out")
            print(f"run folder: {out}")
            summary = train(cfg, episodes, out, args.updates, show_progress=not args.no_progress, init=args.init)
    except (ConfigError, EpisodeError, CheckpointError, run_lock.FolderInUse) as exc:
        print(f"omniloop train: error: {exc}", file=sys.stderr)
        return 2
    last = summary["last"]
    print(f"done: {summary['updates']} learner steps on {summary['transitions']} transitions of "
          f"{summary['episodes']} episodes; loss {last.get('train_loss', float('nan')):.4f}. "
          f"Go on online with: omniloop sim --init {out / 'checkpoint.safetensors'} run.seed_steps=0")
    return 0


def server_config(args: argparse.Namespace):
    import yaml

    from robot_bridge.server import ServerConfig

    data = {}
    if args.config is not None:
        if not args.config.is_file():
            raise ConfigError(f"server config file not found: {args.config}")
        try:
            data = yaml.safe_load(args.config.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"server config {args.config} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"server config {args.config} must hold a mapping at the top")
    for item in args.overrides:
        set_dotted(data, *parse_override(item))
    cfg = from_dict(ServerConfig, data)
    for option in ("driver", "bind"):
        if getattr(args, option) is not None:
            setattr(cfg, option, getattr(args, option))
    if args.keys is not None:
        cfg.keys = str(args.keys)
    cfg.insecure = cfg.insecure or args.insecure
    cfg.lockstep = cfg.lockstep or args.lockstep
    if args.log is not None:
        cfg.log = str(args.log)
    elif not cfg.log:
        cfg.log = str(Path("runs") / "robot-server" / f"{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
    try:
        cfg.safety.validate()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return cfg


def robot_server(args: argparse.Namespace) -> int:
    from robot_bridge.driver import DriverError
    from robot_bridge.drivers import build_driver
    from robot_bridge.server import BindRefused, RobotServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = server_config(args)
        driver = build_driver(cfg)
        server = RobotServer(driver, cfg)
    except (ConfigError, DriverError, BindRefused, FileNotFoundError, ValueError) as exc:
        print(f"omniloop robot-server: error: {exc}", file=sys.stderr)
        return 2
    try:
        server.open()
    except DriverError as exc:
        server.close()
        print(f"omniloop robot-server: error: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.stop_event.set())
    spec = server.spec
    print(f"serving {spec.name} at {server.endpoint}: {spec.control_hz:g} Hz, observation "
          f"{ {k: list(f.shape) for k, f in spec.observation.items()} }, action {spec.action_dim}-d, "
          f"{'CURVE' if cfg.keys else 'no encryption'}, {server.mode}; log {cfg.log}", flush=True)
    try:
        server.serve()
    except DriverError as exc:
        print(f"omniloop robot-server: error: {exc}", file=sys.stderr)
        return 1
    finally:
        server.close()
    status = server.status()
    print(f"stopped after {status['tick']} ticks; commands {status['counts'].get('commands', 0)}, "
          f"dropped {sum(status['drops'].values())} {status['drops'] or ''}")
    return 0


def generate_keys(args: argparse.Namespace) -> int:
    from robot_bridge.keys import generate

    try:
        made = generate(args.dir, args.client)
    except (FileExistsError, RuntimeError) as exc:
        print(f"omniloop keys: error: {exc}", file=sys.stderr)
        return 2
    print(f"server public key: {made['server']} (give it to every agent: --server-key)\n"
          f"client key pair:   {made[args.client]} and its .key_secret (the agent's: --client-key)\n"
          f"allow-list:        {args.dir / 'authorized_clients'} (the server's: --keys {args.dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
