"""The agent: where the world model, the planner and the body meet.

`agent/` owns the loop (`loop.py`: observe, plan, act, update), the assembled mind (`brain.py`), the
replay memory with surprise priorities (`memory.py`), evaluation (`evaluate.py`), episode files
(`episodes.py`, MCAP) and their writer thread (`recorder.py`), what is done with them (summaries,
`episode_summary.py`; replay, `replay.py`, `replay_video.py`, `replay_view.py` and
`replay_robot.py`; the LeRobot export,
`export_lerobot.py`), checkpoints (`checkpoint.py`, safetensors), metrics, plots, videos and the
`omniloop` command (`cli.py`, `episodes_cli.py`). Its config tree (`config.py`) composes every
package's options.

It may import everything: sim/, worldmodel/, planner/, and the libraries they use.
"""
