"""The body in simulation: what the agent sees, feels and hears, and how its actions move it.

`sim/` owns
* MuJoCo tasks with their MJCF assets (`sim/assets/`): `Reach` (`sim.reach`), registered with
  Gymnasium as `omniloop/Reach-v0`;
* Gymnasium envs with multimodal Dict observations (`image`, `proprio`, `audio`), contact audio
  synthesized from MuJoCo contacts (`sim.audio`);
* adapters that present other Gymnasium (`gym:ID`) and dm_control (`dmc:DOMAIN-TASK`) tasks the
  same way (`sim.adapters`);
* observation wrappers (`sim.wrappers`): drop the state vector, stack camera frames;
* `make`, which builds any of them from an `EnvConfig`, and `observation_spec`, which describes
  observations with plain shapes for packages that do not import Gymnasium.

`sim/` may import numpy, mujoco, gymnasium, dm_control (and opencv for resizing); never torch,
never agent/, worldmodel/ or planner/.
"""

from __future__ import annotations

import os

# Offscreen rendering without a display; MuJoCo and dm_control read this once, at import.
os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium  # noqa: E402
from gymnasium import spaces  # noqa: E402

from sim.adapters import DMC_DEFAULT_REPEAT, DMCAdapter, GymAdapter  # noqa: E402
from sim.audio import AUDIO_SAMPLE_RATE, ContactAudio  # noqa: E402
from sim.config import EnvConfig  # noqa: E402
from sim.reach import ReachEnv  # noqa: E402
from sim.wrappers import DropKeys, StackFrames, newest_frame  # noqa: E402

__all__ = [
    "AUDIO_SAMPLE_RATE",
    "REACH_ID",
    "ContactAudio",
    "DMCAdapter",
    "EnvConfig",
    "GymAdapter",
    "ReachEnv",
    "control_period",
    "make",
    "newest_frame",
    "observation_spec",
]

REACH_ID = "omniloop/Reach-v0"
ACCEPTED_NAMES = "'reach' (or 'omniloop/Reach-v0'), 'gym:ID' (e.g. 'gym:InvertedPendulum-v5'), 'dmc:DOMAIN-TASK' (e.g. 'dmc:reacher-easy')"

if REACH_ID not in gymnasium.registry:  # importing twice (or reloading) must not register twice
    gymnasium.register(id=REACH_ID, entry_point="sim.reach:ReachEnv")


def make(cfg: EnvConfig, seed: int | None = None, render_mode: str | None = None) -> gymnasium.Env:
    """The env named by `cfg.name`, its observation shaped by `cfg.proprio` and `cfg.frame_stack`;
    `seed` seeds its first `reset()` that is given no seed.

    Raises ValueError for a name of no accepted form (naming it and the accepted forms), or for an
    observation the options would leave without an image to stack or without any key.
    """
    env = _make_task(cfg, seed, render_mode)
    try:
        if not cfg.proprio:
            env = DropKeys(env, ("proprio",))
        if cfg.frame_stack != 1:
            env = StackFrames(env, cfg.frame_stack)
    except ValueError:
        env.close()
        raise
    return env


def _make_task(cfg: EnvConfig, seed: int | None, render_mode: str | None) -> gymnasium.Env:
    name = cfg.name.strip()
    if name in ("reach", REACH_ID):
        if cfg.action_repeat not in (0, 1):
            # Reach's control period is its audio period too: a longer step would change what it hears.
            raise ValueError(f"reach steps at its own 20 Hz control period: action_repeat must be 0 or 1, got {cfg.action_repeat}")
        return ReachEnv(
            render_mode=render_mode,
            image_size=cfg.image_size,
            episode_length=cfg.episode_length,
            seed=seed,
            pixels=cfg.pixels,
        )
    if name.startswith("gym:") and len(name) > len("gym:"):
        return GymAdapter(
            name[len("gym:") :],
            image_size=cfg.image_size,
            pixels=cfg.pixels,
            action_repeat=cfg.action_repeat or 1,
            episode_length=cfg.episode_length,
            render_mode=render_mode,
            seed=seed,
        )
    if name.startswith("dmc:") and len(name) > len("dmc:"):
        return DMCAdapter(
            name[len("dmc:") :],
            image_size=cfg.image_size,
            pixels=cfg.pixels,
            action_repeat=cfg.action_repeat or DMC_DEFAULT_REPEAT,
            episode_length=cfg.episode_length,
            render_mode=render_mode,
            seed=seed,
        )
    raise ValueError(f"unknown env name {cfg.name!r}; accepted forms: {ACCEPTED_NAMES}")


def observation_spec(space: spaces.Dict) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (shape, dtype name)} of a Dict of Boxes, e.g. {'image': ((64, 64, 3), 'uint8')}."""
    if not isinstance(space, spaces.Dict):
        raise ValueError(f"observation_spec expects a gymnasium.spaces.Dict, got {space}")
    spec: dict[str, tuple[tuple[int, ...], str]] = {}
    for key, sub in space.spaces.items():
        if not isinstance(sub, spaces.Box):
            raise ValueError(f"observation_spec: key {key!r} is not a Box but {sub}")
        spec[key] = (tuple(int(n) for n in sub.shape), sub.dtype.name)
    return spec


def control_period(env: gymnasium.Env) -> float:
    """Seconds of simulated time per agent step of `env` (wrappers are looked through)."""
    base = env.unwrapped
    period = getattr(base, "control_period", None)
    if period is None:
        period = getattr(base, "dt", None)  # Gymnasium's MuJoCo and classic-control envs
    if period is None and base.metadata.get("render_fps"):
        period = 1.0 / base.metadata["render_fps"]  # the rate the env itself would be shown at
    if period is None:
        raise ValueError(f"cannot tell the control period of {base}: it has no control_period, dt or render_fps")
    return float(period)
