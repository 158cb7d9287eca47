"""`omniloop episodes ls|info|export` and `omniloop replay FILE`: recorded episodes as tables, as a
dataset others train on, and replayed."""

from __future__ import annotations

import argparse
import sys

import numpy as np
from rich.console import Console
from rich.table import Table

from agent.episode_summary import SLOW_FRACTION, EpisodeSummary, summarize, summarize_folder
from agent.episodes import EpisodeError, read_episode


def wide_console() -> Console:
    """The terminal's console; piped or logged, one wide enough that file names are not cut."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def episodes_command(args: argparse.Namespace) -> int:
    console = wide_console()
    try:
        if args.episodes_verb == "ls":
            return list_episodes(console, args.dir)
        if args.episodes_verb == "export":
            return export(console, args)
        return show_episode(console, args.file)
    except (EpisodeError, ValueError) as exc:
        print(f"omniloop episodes {args.episodes_verb}: error: {exc}", file=sys.stderr)
        return 2


def list_episodes(console: Console, folder) -> int:
    """One line per episode file; an unreadable one says why, and the listing goes on (exit 1)."""
    summaries = summarize_folder(folder)
    table = Table(title=str(folder))
    for column in ("file", "steps", "return", "success", "duration s", "rate Hz", "target Hz", "note"):
        table.add_column(column, justify="left" if column in ("file", "note") else "right", no_wrap=column == "file")
    bad = 0
    for item in summaries:
        if isinstance(item, EpisodeError):
            bad += 1
            table.add_row("", "", "", "", "", "", "", f"[red]{item}[/red]")
            continue
        table.add_row(item.path.name, str(item.steps), f"{item.episode_return:.1f}", _yes_no(item.success),
                      f"{item.duration_s:.1f}", _rate(item), _number(item.target_hz), _note(item))
    console.print(table)
    good = len(summaries) - bad
    console.print(f"{good} episodes, {sum(s.steps for s in summaries if isinstance(s, EpisodeSummary))} steps"
                  + (f"; {bad} files could not be read" if bad else ""))
    return 1 if bad else 0


def export(console: Console, args: argparse.Namespace) -> int:
    from agent.export_lerobot import export_lerobot

    folder = args.dir
    with console.status(f"exporting {folder}"):
        summary = export_lerobot(folder, args.out, args.task, fps=args.fps)
    console.print(f"{summary['out']}: LeRobot v3.0, {summary['episodes']} episodes, {summary['frames']} frames "
                  f"at {summary['fps']} fps; features " + ", ".join(summary["features"]))
    for name in summary["torn"]:
        console.print(f"[yellow]{name}: torn (its writer was killed); its whole steps are exported[/yellow]")
    for name in summary["skipped_empty"]:
        console.print(f"[yellow]{name}: no whole step; skipped[/yellow]")
    return 0


def show_episode(console: Console, path) -> int:
    s = summarize(read_episode(path))
    console.print(f"[bold]{s.path}[/bold]" + ("" if s.complete else "  [red](torn: the writer was killed; "
                                                                      "every whole step is read)[/red]"))
    facts = Table(show_header=False, box=None)
    facts.add_row("steps", str(s.steps))
    facts.add_row("return", f"{s.episode_return:.3f}")
    facts.add_row("success", _yes_no(s.success))
    facts.add_row("duration", f"{s.duration_s:.2f} s")
    facts.add_row("control rate", f"{_rate(s)} Hz achieved, {_number(s.target_hz)} Hz target"
                  + (f" [red](below {SLOW_FRACTION:.0%} of the target)[/red]" if s.slow else "")
                  + ("" if s.on_robot else " (simulated: the body waits for the agent)"))
    if s.failure:
        facts.add_row("recording", f"[red]stopped early: {s.failure}[/red]")
    if s.dropped_steps is not None:
        facts.add_row("dropped steps", str(s.dropped_steps))
    else:  # the recorder writes its counts last: a torn file, or one from before the recorder, has none
        facts.add_row("dropped steps", "unknown (torn file)" if not s.complete else "not recorded in this file")
    for key, value in s.metadata.items():
        facts.add_row(key, value)
    for name, size in s.attachments.items():
        facts.add_row("attachment", f"{name} ({size} bytes)")
    console.print(facts)
    channels = Table(title="channels")
    channels.add_column("topic")
    channels.add_column("messages", justify="right")
    for topic, count in s.message_counts.items():
        channels.add_row(topic, str(count))
    console.print(channels)
    return 0


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _rate(s: EpisodeSummary) -> str:
    text = _number(s.rate_hz)
    colour = "red" if s.on_robot else "yellow"  # a robot that fell behind is a fault; a slow simulation is not
    return f"[{colour}]{text}[/{colour}]" if s.slow else text


def _note(s: EpisodeSummary) -> str:
    notes = []
    if not s.complete:
        notes.append("torn")
    if s.dropped_steps:
        notes.append(f"{s.dropped_steps} steps dropped")
    if s.failure:
        notes.append("recording stopped early")
    if s.slow:
        notes.append(f"below {SLOW_FRACTION:.0%} of the control rate"
                     + ("" if s.on_robot else " (simulated: slower than real time)"))
    return ", ".join(notes)


def replay_command(args: argparse.Namespace) -> int:
    """`omniloop replay FILE --mode states|actions|video|view|robot` (see `omniloop replay --help`)."""
    from agent.replay import EXACT, replay_actions, replay_states

    console = wide_console()
    try:
        episode = read_episode(args.file)
        if args.mode == "video":
            return video(console, episode, args)
        if args.mode == "robot":
            return robot(console, episode, args)
        if args.mode == "view":
            from agent.replay_view import view_episode

            steps = view_episode(episode, save=args.save, connect=args.viewer)
            console.print(f"{steps} steps sent to Rerun" + (f": {args.save}" if args.save else ""))
            return 0
        report = replay_states(episode) if args.mode == "states" else replay_actions(episode)
    except EpisodeError as exc:
        print(f"omniloop replay: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, OSError, RuntimeError) as exc:  # a body, a codec or a disk that refused
        print(f"omniloop replay: error: {args.file}: {args.mode} replay failed: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    if args.out is not None:
        write_report(report, args.out)
    table = Table(title=f"{args.file}: {args.mode} replay, {len(report.steps)} steps")
    for column in ("step", "image (0-255)", "proprio", "joint positions", "reward"):
        table.add_column(column, justify="right")
    every = max(1, len(report.steps) // 10)  # ten rows or so; --out has them all
    for s in report.steps[::every] + ([] if (len(report.steps) - 1) % every == 0 else report.steps[-1:]):
        table.add_row(str(s.step), *(_number(v) for v in (s.image, s.proprio, s.qpos, s.reward)))
    console.print(table)
    largest = {name: report.largest(name) for name in ("image", "proprio", "qpos", "reward")}
    console.print("largest difference: " + ", ".join(f"{k} {_number(v)}" for k, v in largest.items() if v is not None))
    first = report.first_divergence(EXACT if args.mode == "states" else 1e-5)
    if args.mode == "states":
        exact = first is None
        console.print("the replay reproduces the recording exactly" if exact else
                      f"[red]the replay differs from the recording from step {first}[/red]")
        return 0 if exact else 1
    console.print("the replay follows the recording to the end" if first is None else
                  f"the replay leaves the recording at step {first} (difference above 1e-5)")
    if report.stopped_at is not None:
        console.print(f"[yellow]the file lacks the steps before step {report.stopped_at} and the body cannot be set "
                      "to where it picks up again: the replay ends there[/yellow]")
    return 0


def video(console: Console, episode, args: argparse.Namespace) -> int:
    from agent.replay_video import write_episode_video

    if args.out is None:
        print("omniloop replay: error: --mode video needs --out FILE.mp4", file=sys.stderr)
        return 2
    with console.status(f"rendering {len(episode.steps)} steps"):
        frames, (height, width) = write_episode_video(episode, args.out, args.fps)
    console.print(f"{args.out}: {frames} frames of {width}x{height}")
    return 0


def robot(console: Console, episode, args: argparse.Namespace) -> int:
    from agent.replay_robot import RobotReplayConfig, replay_on_robot
    from robot_bridge.client import RemoteRobotEnv, RobotFault
    from robot_bridge.config import BridgeConfig

    if args.connect is None:
        print("omniloop replay: error: --mode robot needs --connect ENDPOINT", file=sys.stderr)
        return 2
    client_key = args.client_key or (args.server_key.with_name("client.key_secret") if args.server_key else None)
    bridge = BridgeConfig(connect=args.connect, server_key=None if args.server_key is None else str(args.server_key),
                          client_key=None if client_key is None else str(client_key))
    cfg = RobotReplayConfig(ramp_s=args.ramp_s, tolerance=args.tolerance)
    try:
        env = RemoteRobotEnv(bridge)
    except (ConnectionError, ValueError) as exc:
        print(f"omniloop replay: error: {exc}", file=sys.stderr)
        return 1
    try:
        report = replay_on_robot(episode, env, cfg, say=console.print)
    except (ConnectionError, RobotFault) as exc:
        print(f"omniloop replay: error: {exc}", file=sys.stderr)
        return 1
    finally:
        env.close()
    if report.divergence:
        console.print(f"{report.steps} of {report.of} steps replayed at {report.rate_hz:.1f} steps/s; joints within "
                      f"{report.start_error:.3f} of the start pose when it began; from the recording, median "
                      f"{np.median(report.divergence):.3f}, largest {max(report.divergence):.3f}")
    if report.rest_error <= cfg.tolerance:
        console.print(f"back at rest (within {report.rest_error:.3f})")
    else:
        console.print(f"[yellow]not back at rest: a joint is {report.rest_error:.3f} away[/yellow]")
    return 130 if report.stopped else 0


def write_report(report, path) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "image", "proprio", "qpos", "reward"])
        for s in report.steps:
            writer.writerow([s.step, *("" if v is None else f"{v:.9g}" for v in (s.image, s.proprio, s.qpos, s.reward))])
