"""`omniloop episodes ls` and `info`: length, return, success, duration, control rate against its
target (flagged below 90 %), channels and their counts; a bad file is named, never a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.cli import main
from agent.episodes import EpisodeWriter, StepRecord
from agent.recorder import EpisodeRecorder
from test_episodes import METADATA

START = 1_800_000_000_000_000_000


def write(path: Path, steps: int, period_s: float, control_hz: float, recorder: bool = True,
          env: str = "robot:sim:reach@tcp://127.0.0.1:5555") -> None:
    """An episode whose observations come every `period_s`, each step's result 20 ms after it;
    reward 1 per step, success at the end."""
    meta = {**METADATA, "control_hz": str(control_hz), "env": env}
    action = np.zeros(2, np.float32)
    records = [StepRecord(step=i, time_ns=START + int(i * period_s * 1e9),
                          observation={"proprio": np.full(3, i, np.float32)}, action_requested=action,
                          action_sent=None, action_applied=action, reward=1.0, success=i == steps - 1,
                          result_time_ns=START + int((i * period_s + 0.02) * 1e9))
               for i in range(steps)]
    if recorder:
        with EpisodeRecorder(path, meta) as rec:
            for r in records:
                rec.record(r)
    else:
        writer = EpisodeWriter(path, meta)  # killed before close: no footer, no counts
        for r in records:
            writer.write(r)
        writer._file.flush()


def test_ls_lists_every_episode_and_flags_a_slow_one(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "run" / "episodes"
    write(folder / "episode_000000.mcap", 11, period_s=0.05, control_hz=20)  # on time
    write(folder / "episode_000001.mcap", 11, period_s=0.1, control_hz=20)  # half the rate
    write(folder / "episode_000002.mcap", 5, period_s=0.05, control_hz=20, recorder=False)  # torn
    assert main(["episodes", "ls", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[1]: line for line in out.splitlines() if ".mcap" in line}
    assert set(lines) == {"episode_000000.mcap", "episode_000001.mcap", "episode_000002.mcap"}
    on_time, slow, torn = lines.values()
    assert " 11 " in on_time and "11.0" in on_time and "yes" in on_time and " 20 " in on_time
    assert "below 90%" not in on_time and "below 90%" in slow and " 10 " in slow  # 10 Hz achieved
    assert "torn" in torn and " 5 " in torn
    assert "3 episodes, 27 steps" in out


def test_info_shows_metadata_channels_and_counts(tmp_path: Path, capsys) -> None:
    path = tmp_path / "e.mcap"
    write(path, 11, period_s=0.05, control_hz=20)
    assert main(["episodes", "info", str(path)]) == 0
    out = capsys.readouterr().out
    for text in ("steps", "11", "0.52 s", "20 Hz achieved, 20 Hz target", "dropped steps",
                 "/proprio", "/action", "/reward", "code_version", "abc123"):
        assert text in out, text
    counts = {line.split()[1]: line.split()[3] for line in out.splitlines() if line.strip().startswith("│ /")}
    assert {k: v for k, v in counts.items() if v != "0"} == {"/proprio": "11", "/action": "11", "/reward": "11"}
    assert counts["/camera/image"] == "0"  # every channel of the file is listed, with its count


def test_bad_files_are_named_and_the_listing_goes_on(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "episodes"
    write(folder / "episode_000000.mcap", 4, period_s=0.05, control_hz=20)
    (folder / "episode_000001.mcap").write_bytes(b"not an mcap file at all")
    assert main(["episodes", "ls", str(folder)]) == 1  # one file could not be read
    out = capsys.readouterr().out
    assert "episode_000000.mcap" in out and "not an MCAP file" in out and "1 files could not be read" in out
    assert main(["episodes", "info", str(folder / "episode_000001.mcap")]) == 2
    err = capsys.readouterr().err
    assert "episode_000001.mcap" in err and "not an MCAP file" in err and "Traceback" not in err
    assert main(["episodes", "ls", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such folder" in capsys.readouterr().err


def test_export_writes_a_lerobot_dataset_from_a_run_folder(tmp_path: Path, capsys) -> None:
    import json

    run = tmp_path / "run"
    write(run / "episodes" / "episode_000000.mcap", 6, period_s=0.05, control_hz=20)
    write(run / "episodes" / "episode_000001.mcap", 4, period_s=0.05, control_hz=20)
    out = tmp_path / "dataset"
    assert main(["episodes", "export", str(run), str(out), "--format", "lerobot"]) == 0
    assert "2 episodes, 10 frames at 20 fps" in capsys.readouterr().out
    info = json.loads((out / "meta" / "info.json").read_text())
    assert (info["codebase_version"], info["total_episodes"], info["total_frames"], info["fps"]) == ("v3.0", 2, 10, 20)
    assert main(["episodes", "export", str(run), str(out), "--format", "lerobot"]) == 2  # never over a dataset
    assert "not empty" in capsys.readouterr().err


def test_a_slow_simulated_episode_is_flagged_as_slower_than_real_time(tmp_path: Path, capsys) -> None:
    write(tmp_path / "episode_000000.mcap", 11, period_s=0.1, control_hz=20, env="reach")  # half speed
    assert main(["episodes", "ls", str(tmp_path)]) == 0
    assert "below 90% of the control rate (simulated: slower than real time)" in capsys.readouterr().out
    assert main(["episodes", "info", str(tmp_path / "episode_000000.mcap")]) == 0
    assert "(below 90% of the target) (simulated: the body waits for the agent)" in capsys.readouterr().out
