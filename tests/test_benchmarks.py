"""The benchmarks run end to end at a tiny size: our agent and SAC on a dm_control task with the
evaluation protocol, the promise check on that run's checkpoint, and MoE against dense on the
episodes that run recorded."""

from __future__ import annotations

import csv
import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "env.episode_length=10", "run.seed_steps=10", "run.warmup_updates=2", "learner.batch_size=8",
    "planner.samples=16", "planner.elites=4", "planner.iterations=1", "worldmodel.d_model=16",
    "worldmodel.latent_dim=16", "worldmodel.head_hidden=16", "worldmodel.dynamics_width=16",
    "worldmodel.moe.expert_hidden=16",
]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_dmc_benchmark_ours_and_sac_then_moe_vs_dense(tmp_path, capsys):
    dmc = load("dmc")
    out = tmp_path / "dmc"
    # 40 env steps = 20 agent steps of 2 episodes; an evaluation every 20 env steps.
    dmc.main(["--task", "reacher-easy", "--steps", "40", "--eval-every", "20", "--eval-episodes", "2",
              "--baseline", "sac", "--out", str(out), *TINY])
    results = rows(out / "results.csv")
    assert [(r["agent"], r["env_steps"]) for r in results] == [("omniloop", "20"), ("omniloop", "40"),
                                                              ("sac", "20"), ("sac", "40")]
    assert all(0 <= float(r["return"]) <= 20 for r in results)  # 10 steps of 2 env steps, rewards in [0, 1]
    assert (out / "curve.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "| omniloop (this machine) |" in printed
    assert "[omniloop seed 0]      20 env steps: evaluating 2 episodes" in printed  # said before the wait
    assert printed.count("    each episode: ") == 4  # 2 evaluations of each agent, every episode's return

    # Run again: the finished run is not repeated, and its rows stay.
    dmc.main(["--task", "reacher-easy", "--steps", "40", "--eval-every", "20", "--eval-episodes", "2",
              "--out", str(out), *TINY])
    assert len(rows(out / "results.csv")) == 4
    capsys.readouterr()

    # The promise check, off and on, on that run's checkpoint
    load("promise_check").main([str(out / "omniloop-seed0"), "--episodes", "2", "--first", "3",
                                "deliberation.promise_window=2"])
    printed = capsys.readouterr().out
    for line in ("| episode | 3 | 4 | mean |", "| without the check |", "| with the check |", "System 1 took over for"):
        assert line in printed, printed

    moe = load("moe_vs_dense")
    moe.main(["--episodes", str(out / "omniloop-seed0" / "episodes"), "--experts", "4,8", "--steps", "6",
              "--dense-factor", "2", "--eval-every", "3", "--batch", "8", "--horizon", "3", "--held-out", "0.5",
              "--out", str(tmp_path / "moe"), *TINY])
    summary = rows(tmp_path / "moe" / "summary.csv")
    assert [s["model"] for s in summary] == ["MoE E=4", "MoE E=8"]
    curves = rows(tmp_path / "moe" / "curves.csv")
    assert max(int(r["step"]) for r in curves if r["model"] == "dense") == 12  # --dense-factor 2
    # Twice the experts, twice the FFN parameters; the active ones differ only by the router's
    # (at this tiny width the router is ~6 % of them).
    assert int(summary[1]["ffn_params"]) > 1.9 * int(summary[0]["ffn_params"])
    assert abs(int(summary[1]["ffn_active_params"]) - int(summary[0]["ffn_active_params"])) < 0.1 * int(summary[0]["ffn_active_params"])
    assert (tmp_path / "moe" / "moe_vs_dense.png").stat().st_size > 1000


def test_dmc_evaluations_resumed_past_lost_rows_keep_their_labels_and_training_time(tmp_path):
    """results.csv lost, the checkpoint at 50 env steps: the brain is evaluated next at 60, never late under
    20 or 40; its training time is the checkpoint's wall clock less the evaluations it went through."""
    from agent.evaluate import Evaluation

    dmc = load("dmc")
    args = dmc.parse_args(["--task", "reacher-easy", "--steps", "100", "--eval-every", "20", "--out", str(tmp_path)])
    results = dmc.Results(tmp_path / "results.csv")
    evaluator = dmc.Evaluator(args, "omniloop", 0, results, repeat=2, resumed={"env_step": 25, "wall_s": 100.0})
    evaluator(30, lambda: Evaluation(2, 5.0, 1.0, None, 10.0))
    assert [r["env_steps"] for r in results.rows] == [60]
    assert 100.0 <= results.rows[0]["train_s"] < 105.0


def test_dmc_results_drop_a_row_a_kill_cut_short_and_name_a_broken_one(tmp_path, capsys):
    dmc = load("dmc")
    path = tmp_path / "results.csv"
    whole = "omniloop,reacher-easy,state,0,10000,700.5,20.0,600.0,400.0"
    path.write_text(",".join(dmc.FIELDS) + "\r\n" + whole + "\r\n" + "omniloop,reacher-easy,state,0,20000,81")
    results = dmc.Results(path)
    assert [r["env_steps"] for r in results.rows] == [10000]
    assert "cut short" in capsys.readouterr().out
    assert path.read_bytes().endswith(f"{whole}\r\n".encode())  # the next row starts on a line of its own
    path.write_text(",".join(dmc.FIELDS) + "\r\nomniloop,reacher-easy,state,0,ten,1,1,1,1\r\n" + whole + "\r\n")
    with pytest.raises(ValueError, match="line 2"):
        dmc.Results(path)


def test_dmc_refuses_evaluations_inside_an_episode_and_an_out_folder_in_use(tmp_path):
    from agent import run_lock

    dmc = load("dmc")
    with pytest.raises(SystemExit, match="multiple of dmc:reacher-easy's episode, 20 env steps"):
        dmc.main(["--task", "reacher-easy", "--steps", "60", "--eval-every", "30", "--out", str(tmp_path), *TINY])
    with run_lock.hold(tmp_path), pytest.raises(SystemExit, match="in use by another process"):
        dmc.main(["--task", "reacher-easy", "--steps", "40", "--eval-every", "20", "--out", str(tmp_path), *TINY])
    assert not (tmp_path / "results.csv").exists()


def test_moe_multiplier_interpolates_where_dense_crosses_the_target():
    moe = load("moe_vs_dense")
    dense = [{"step": 100 * (i + 1), "held_out_loss": loss} for i, loss in enumerate([4, 4, 4, 2, 2, 2])]
    sparse = [{"step": 100 * (i + 1), "held_out_loss": 3.0} for i in range(3)]
    # dense's 3-point means: 4, 4, 4, 3.33, 2.67, 2; they cross 3 halfway from 400 to 500 steps
    mult, reached = moe.multiplier(dense, sparse)
    assert reached and abs(mult - 450 / 300) < 1e-9
    assert moe.multiplier(dense[:3], sparse) == (1.0, False)  # never reached: a lower bound


def test_dmc_table_gives_a_spread_across_seeds_only_where_there_are_two():
    dmc = load("dmc")
    rows_ = [{"agent": "omniloop", "env_steps": 100_000, "return": r} for r in (900.0, 950.0)]
    rows_ += [{"agent": "sac", "env_steps": 100_000, "return": 500.0}]
    lines = dmc.table(rows_, "reacher-easy", "state").splitlines()
    assert lines[2] == "| omniloop (this machine) | 925 ± 35 (n=2) |"  # the sample std: 50 / sqrt(2)
    assert lines[3] == "| sac (this machine) | 500 (n=1) |"
    assert lines[4] == "| TD-MPC2 (published) | 937 |"


def test_dmc_benchmark_from_pixels(tmp_path):
    """--pixels: the agent sees only the last 3 frames (no state), and still runs the protocol."""
    dmc = load("dmc")
    out = tmp_path / "pixels"
    dmc.main(["--task", "reacher-easy", "--pixels", "--steps", "20", "--eval-every", "20", "--eval-episodes", "1",
              "--out", str(out), *TINY, "env.image_size=32", "worldmodel.image_grid=4"])
    results = rows(out / "results.csv")
    assert [(r["agent"], r["obs"], r["env_steps"]) for r in results] == [("omniloop", "pixels", "20")]
    config = (out / "omniloop-seed0" / "config.yaml").read_text()
    assert "frame_stack: 3" in config and "proprio: false" in config
    from agent.episodes import read_episode

    episode = read_episode(sorted((out / "omniloop-seed0" / "episodes").glob("*.mcap"))[0])
    assert set(episode.steps[0].observation) == {"image"}
    assert episode.steps[0].observation["image"].shape == (32, 32, 3)  # the file keeps the newest frame


def test_bridge_benchmark_writes_its_table_and_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # its robot runs in a spawned process that imports it
    bridge = load("bridge")
    assert bridge.main(["--seconds", "0.2", "--out", str(tmp_path)]) == 0
    table = rows(tmp_path / "bridge.csv")
    assert [r["payload"] for r in table] == ["state", "state + 64x64 image"]
    for r in table:  # numbers are measured, not asserted: only that each was taken
        assert float(r["raw_p50_us"]) > 0
        for k in ("lean", "codec", "agent_alone", "bridge", "cpp"):
            assert float(r[f"{k}_p50_us"]) > 0
        for k in ("bridge", "cpp"):  # the Python and the C++ robot server
            assert float(r[f"{k}_max_us"]) >= float(r[f"{k}_p999_us"]) >= float(r[f"{k}_p99_us"]) > 0
            assert float(r[f"{k}_lockstep_hz"]) > 0
        for k in ("raw", "agent_alone", "bridge", "cpp"):  # each side's CPU time, from this process and from /proc
            assert float(r[f"{k}_agent_cpu_us"]) > 0 and float(r[f"{k}_robot_cpu_us"]) > 0
    assert (tmp_path / "bridge.png").stat().st_size > 0 and not (tmp_path / "server.jsonl").exists()


def test_recording_benchmark_measures_the_loop_with_recording_on_and_off(tmp_path, capsys):
    recording = load("recording")
    assert recording.main(["--steps", "30", "--rounds", "1", "--out", str(tmp_path), *TINY]) == 0
    (row,) = rows(tmp_path / "recording.csv")
    # numbers are measured, not asserted: only that each was taken
    assert float(row["record_call_us"]) > 0 and float(row["step_off_ms"]) > 0 and float(row["step_on_ms"]) > 0
    assert float(row["writer_cpu_ms"]) > 0
    assert len(list((tmp_path / "loop-on" / "episodes").glob("*.mcap"))) == 3
    assert not (tmp_path / "loop-off" / "episodes").exists()


def test_offline_pretrain_benchmark_runs_source_offline_and_both_online_runs(tmp_path, capsys):
    bench = load("offline_pretrain")
    assert bench.main(["--source-steps", "30", "--updates", "10", "--steps", "20", "--out", str(tmp_path), *TINY]) == 0
    table = rows(tmp_path / "offline_pretrain.csv")
    assert {r["start"] for r in table} == {"offline brain", "scratch"}
    assert [r["env_step"] for r in table if r["start"] == "scratch"] == ["10", "20"]
    assert (tmp_path / "offline_pretrain.png").stat().st_size > 0
    assert (tmp_path / "offline" / "checkpoint.safetensors").is_file()
    pretrained = [r for r in table if r["start"] == "offline brain"]
    assert len(pretrained) == 2


def test_brain_speed_measures_the_machine_then_both_world_models_and_a_variant(monkeypatch, capsys):
    brain_speed = load("brain_speed")
    tiny = [o for o in TINY if not o.startswith(("env.", "run."))]
    monkeypatch.setattr(sys, "argv", ["brain_speed.py", "--repeats", "2", "--config", str(ROOT / "configs/dmc.yaml"),
                                      "--state", "6", "--versus", "worldmodel.value_heads=0", *tiny])
    brain_speed.main()
    out = capsys.readouterr().out
    limits = out.splitlines()[0]
    assert limits.startswith("this CPU") and "GFLOP/s" in limits
    assert "| cpu | MoE |" in out and "| cpu | dense twin |" in out
    assert "| cpu | MoE, worldmodel.value_heads=0 |" in out


def test_brain_speed_refuses_a_versus_that_would_time_one_model_twice_or_a_dense_one_as_moe(monkeypatch, capsys):
    brain_speed = load("brain_speed")
    dmc = ROOT / "configs/dmc.yaml"
    variants = brain_speed.versus_variants(dmc, [], ["worldmodel.value_heads=0", "planner.samples=512"])
    assert list(variants) == ["MoE", "dense twin", "MoE, worldmodel.value_heads=0", "MoE, planner.samples=512"]
    with pytest.raises(ValueError, match="timed once"):  # the same override, spelled another way
        brain_speed.versus_variants(dmc, [], ["worldmodel.value_heads=0", "worldmodel.value_heads= 0"])
    with pytest.raises(ValueError, match="of 'MoE' already"):  # what configs/dmc.yaml says already
        brain_speed.versus_variants(dmc, [], ["worldmodel.value_heads=2"])
    with pytest.raises(ValueError, match="dense twin is timed already"):
        brain_speed.versus_variants(dmc, [], ["worldmodel.moe.dense=true"])
    # refused before anything is timed, as a usage error
    monkeypatch.setattr(sys, "argv", ["brain_speed.py", "--config", str(dmc), "--versus", "worldmodel.value_heads=2"])
    with pytest.raises(SystemExit) as exit_:
        brain_speed.main()
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert "this CPU" not in captured.out and "timed once" in captured.err


def test_taking_turns_times_each_function_its_repeats_in_turns():
    brain_speed = load("brain_speed")
    calls: list[str] = []
    times = brain_speed.taking_turns({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 7, turn=3)
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    # two warm-up calls each, then turns of 3, 3 and the last 1
    assert "".join(calls) == "aabb" + "aaabbb" * 2 + "ab"


def test_bridge_benchmark_reads_a_process_cpu_time_from_proc_as_the_process_itself_counts_it(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    bridge = load("bridge")
    own, proc = bridge.agent_cpu_s(), bridge.robot_cpu_s(os.getpid())
    end = time.process_time() + 0.2
    while time.process_time() < end:  # burn 0.2 s of CPU
        pass
    tick = 1 / os.sysconf("SC_CLK_TCK")  # /proc counts in clock ticks
    assert abs((bridge.robot_cpu_s(os.getpid()) - proc) - (bridge.agent_cpu_s() - own)) <= 2 * tick + 0.02


def test_learn_reach_goes_on_from_its_run_folder_where_it_stopped(tmp_path, capsys):
    from agent.checkpoint import read_checkpoint_meta

    reach = load("learn_reach")
    out = tmp_path / "reach"
    reach.main(["--stages", "20", "--eval-episodes", "1", "--out", str(out), *TINY])
    (first,) = rows(out / "results.csv")
    assert first["env_step"] == "20" and 0 <= float(first["success"]) <= 1

    # Later stages on the same folder: stage 20 is kept, not trained or evaluated again.
    reach.main(["--stages", "20,40", "--eval-episodes", "1", "--out", str(out), *TINY])
    kept, later = rows(out / "results.csv")
    assert kept == first
    assert later["env_step"] == "40" and float(later["train_minutes"]) > float(first["train_minutes"])
    assert read_checkpoint_meta(out / "checkpoint.safetensors")["env_step"] == 40
    assert (out / "learn_reach.png").stat().st_size > 1000

    with pytest.raises(SystemExit, match="can no longer be evaluated"):  # the model has moved past 30
        reach.main(["--stages", "30,60", "--eval-episodes", "1", "--out", str(out), *TINY])
    # a sitting stopped inside a stage: results end at 20, the checkpoint is at 40, so 30 is refused too
    (out / "results.csv").write_text("\n".join((out / "results.csv").read_text().splitlines()[:2]) + "\n")
    with pytest.raises(SystemExit, match="has trained to 40 env steps"):
        reach.main(["--stages", "20,30,60", "--eval-episodes", "1", "--out", str(out), *TINY])
    with pytest.raises(SystemExit):  # argparse's error, naming --stages
        reach.main(["--stages", "5k", "--out", str(out)])
    assert "--stages must be env step counts" in capsys.readouterr().err
    (out / "results.csv").write_text("env_step,return\n20,not a number\n")
    with pytest.raises(SystemExit, match="results.csv is not a learn_reach results file"):
        reach.main(["--stages", "60", "--eval-episodes", "1", "--out", str(out), *TINY])
