"""Other people's tasks as omniloop envs: any Box Gymnasium env (`gym:ID`) or a dm_control suite
task (`dmc:DOMAIN-TASK`), both presented like Reach.

Both adapters return a Dict observation with
    proprio (D,) float32       the task's own observation, flattened
    image   (S, S, 3) uint8    a camera frame, only when `pixels` is True
take actions in Box(-1, 1) that are mapped linearly onto the task's own bounds, repeat each action
`action_repeat` times (rewards summed), and are deterministic under `reset(seed=...)`.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from sim.images import resize_image

RENDER_SIZE = 256  # side of the frame `render()` returns for people
SUPERSAMPLE = 2  # images are rendered this many times larger, then area-averaged
DMC_DEFAULT_REPEAT = 2  # the usual action repeat of published dm_control baselines
SEED_MODULUS = 2**32  # numpy's legacy RandomState (used by dm_control) takes seeds below 2**32


# --------------------------------------------------------------------------------- shared helpers


def unit_action_space(shape: tuple[int, ...]) -> spaces.Box:
    """Box(-1, 1) of `shape`, float32: what the agent acts in for every task."""
    return spaces.Box(-1.0, 1.0, shape=shape, dtype=np.float32)


def rescale_action(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map `action` from [-1, 1] (clipped first) linearly onto [low, high]; same shape, float64."""
    unit = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
    return low + (unit + 1.0) * 0.5 * (high - low)


def image_space(size: int) -> spaces.Box:
    return spaces.Box(0, 255, shape=(size, size, 3), dtype=np.uint8)


def make_cheap_to_render(model: Any, frame_size: int) -> None:
    """Settings of a MuJoCo model (mujoco.MjModel or dm_control's wrapper) for fast CPU rendering.

    Without shadows and reflections software rendering is ~30x faster, without multisampling
    ~1.5-3x (supersampling then area-averaging smooths edges instead). The offscreen buffer grows
    to hold `frame_size`. Call it before the first render: the GL context reads these then.
    """
    model.light_castshadow[:] = 0
    model.mat_reflectance[:] = 0
    model.vis.quality.offsamples = 0
    model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), frame_size)
    model.vis.global_.offheight = max(int(model.vis.global_.offheight), frame_size)


def _check_finite_bounds(what: str, low: np.ndarray, high: np.ndarray) -> None:
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise ValueError(f"{what}: action bounds must be finite to map [-1, 1] onto them, got low={low}, high={high}")


# ------------------------------------------------------------------------------------ gym: ID


def _is_mujoco_env(env_id: str) -> bool:
    """Whether `env_id` is one of Gymnasium's MuJoCo envs (they accept width/height)."""
    entry = gymnasium.spec(env_id).entry_point
    return isinstance(entry, str) and entry.startswith("gymnasium.envs.mujoco")


class GymAdapter(gymnasium.Env):
    """A Gymnasium env with Box observation and action spaces, as an omniloop env."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        env_id: str,
        image_size: int = 64,
        pixels: bool = True,
        action_repeat: int = 1,
        episode_length: int = 0,
        render_mode: str | None = None,
        seed: int | None = None,
    ) -> None:
        """`episode_length` 0 keeps the env's own time limit; `seed` seeds the first `reset()`."""
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"gym:{env_id}: render_mode must be None or 'rgb_array', got {render_mode!r}")
        if action_repeat < 1:
            raise ValueError(f"gym:{env_id}: action_repeat must be >= 1, got {action_repeat}")
        self.env_id = env_id
        self.image_size = image_size
        self.pixels = pixels
        self.action_repeat = action_repeat
        self.render_mode = render_mode
        self._pending_seed = seed
        # episode_length counts agent steps; the inner TimeLimit counts the inner env's, action_repeat per agent step
        self._env = self._make_inner(env_id, episode_length * action_repeat, image_size, pixels, render_mode)
        try:
            self._check_spaces()
        except ValueError:
            self._env.close()
            raise
        inner_action = self._env.action_space
        self._action_low = inner_action.low.astype(np.float64)
        self._action_high = inner_action.high.astype(np.float64)
        # one agent step is action_repeat of the inner env's: shown at its rate, a video of agent steps runs that much slower
        self._inner_fps = self._env.metadata.get("render_fps")
        self.metadata = {**self.metadata, "render_fps": (self._inner_fps or 30 * action_repeat) / action_repeat}

        inner_obs = self._env.observation_space
        observation = {
            "proprio": spaces.Box(
                inner_obs.low.reshape(-1).astype(np.float32),
                inner_obs.high.reshape(-1).astype(np.float32),
                dtype=np.float32,
            )
        }
        if pixels:
            observation["image"] = image_space(image_size)
        self.observation_space = spaces.Dict(observation)
        self.action_space = unit_action_space(inner_action.shape)

    @staticmethod
    def _make_inner(
        env_id: str, episode_length: int, image_size: int, pixels: bool, render_mode: str | None
    ) -> gymnasium.Env:
        """The wrapped env, rendering rgb_array frames when images or `render()` are wanted."""
        rendering = pixels or render_mode is not None
        kwargs: dict[str, Any] = {}
        try:
            mujoco_env = _is_mujoco_env(env_id)
        except gymnasium.error.Error as exc:
            raise ValueError(f"unknown Gymnasium env id {env_id!r} (in 'gym:{env_id}'): {exc}") from None
        if rendering:
            kwargs["render_mode"] = "rgb_array"
            if mujoco_env:
                # MuJoCo envs render 480x480 by default; twice the image size is enough for a
                # clean area-averaged downscale and several times cheaper to render. With images,
                # render() shows that same frame: a larger one would change the observations'
                # pixels, and an env made for videos must see what the trained one saw.
                side = SUPERSAMPLE * image_size if pixels else RENDER_SIZE
                kwargs.update(width=side, height=side)
        if episode_length > 0:
            kwargs["max_episode_steps"] = episode_length
        env = gymnasium.make(env_id, **kwargs)
        model = getattr(env.unwrapped, "model", None)
        if mujoco_env and model is not None:
            make_cheap_to_render(model, kwargs.get("width", 0))
        return env

    def _check_spaces(self) -> None:
        for what, space in (("observation", self._env.observation_space), ("action", self._env.action_space)):
            if not isinstance(space, spaces.Box):
                raise ValueError(f"gym:{self.env_id}: the {what} space must be a Box, got {space}")
        _check_finite_bounds(f"gym:{self.env_id}", self._env.action_space.low, self._env.action_space.high)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if seed is None and self._pending_seed is not None:
            seed = self._pending_seed
        self._pending_seed = None
        super().reset(seed=seed)
        obs, info = self._env.reset(seed=seed, options=options)
        return self._observation(obs), dict(info)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        inner_action = rescale_action(action, self._action_low, self._action_high).astype(
            self._env.action_space.dtype
        )
        total = 0.0
        for _ in range(self.action_repeat):
            obs, reward, terminated, truncated, info = self._env.step(inner_action)
            total += float(reward)
            if terminated or truncated:
                break
        return self._observation(obs), total, bool(terminated), bool(truncated), dict(info)

    def render(self) -> np.ndarray | None:
        """The wrapped env's own rgb_array frame in 'rgb_array' mode; None otherwise."""
        if self.render_mode != "rgb_array":
            return None
        return self._env.render()

    def close(self) -> None:
        self._env.close()

    def get_state(self) -> dict[str, np.ndarray] | None:
        """The MuJoCo state (time, qpos, qvel, act) of a MuJoCo task, for the episode file; None for
        other envs. A task's own randomization that lives in its model is not in it."""
        data = getattr(self._env.unwrapped, "data", None)
        return None if data is None or not hasattr(data, "qpos") else mujoco_state(data)

    @property
    def control_period(self) -> float | None:
        """Seconds per agent step, where the wrapped env tells its time step (`dt`) or its render rate."""
        dt = getattr(self._env.unwrapped, "dt", None)
        if dt is None and self._inner_fps:
            dt = 1.0 / self._inner_fps  # classic control: the rate the env itself is shown at
        return None if dt is None else float(dt) * self.action_repeat

    def _observation(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        out = {"proprio": np.asarray(obs, dtype=np.float32).reshape(-1).copy()}
        if self.pixels:
            out["image"] = resize_image(self._env.render(), self.image_size)
        return out


def mujoco_state(data) -> dict[str, np.ndarray]:
    """Copies of an MjData's (or dm_control's wrapper of one) time, qpos, qvel and act."""
    return {"time": np.array([float(data.time)]), "qpos": np.array(data.qpos, np.float64),
            "qvel": np.array(data.qvel, np.float64), "act": np.array(data.act, np.float64)}


# ------------------------------------------------------------------------- dmc: DOMAIN-TASK


def _suite() -> Any:
    """dm_control.suite, imported on first use: it takes ~0.5 s that other runs need not pay."""
    from dm_control import suite

    return suite


def parse_dmc_name(name: str) -> tuple[str, str]:
    """'cartpole-swingup' -> ('cartpole', 'swingup'); checked against dm_control.suite.ALL_TASKS.

    Domains have no hyphens, task names may have underscores, so the first hyphen splits.
    """
    domain, sep, task = name.partition("-")
    known = _suite().ALL_TASKS
    domains = sorted({d for d, _ in known})
    if not sep or not domain or not task:
        raise ValueError(f"dm_control task {name!r} is not of the form DOMAIN-TASK (e.g. 'dmc:reacher-easy')")
    if domain not in domains:
        raise ValueError(f"unknown dm_control domain {domain!r} in 'dmc:{name}'; domains: {', '.join(domains)}")
    if (domain, task) not in known:
        tasks = sorted(t for d, t in known if d == domain)
        raise ValueError(f"unknown dm_control task {task!r} of domain {domain!r}; tasks: {', '.join(tasks)}")
    return domain, task


class DMCAdapter(gymnasium.Env):
    """A dm_control suite task as an omniloop Gymnasium env."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        name: str,
        image_size: int = 64,
        pixels: bool = True,
        action_repeat: int = DMC_DEFAULT_REPEAT,
        episode_length: int = 0,
        render_mode: str | None = None,
        seed: int | None = None,
    ) -> None:
        """`name` is 'DOMAIN-TASK'. `episode_length` 0 keeps the task's time limit (1000 physics
        control steps); a positive value may only shorten it. `seed` seeds the task's RNG."""
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"dmc:{name}: render_mode must be None or 'rgb_array', got {render_mode!r}")
        if action_repeat < 1:
            raise ValueError(f"dmc:{name}: action_repeat must be >= 1, got {action_repeat}")
        domain, task = parse_dmc_name(name)
        self.name = name
        self.image_size = image_size
        self.pixels = pixels
        self.action_repeat = action_repeat
        self.episode_length = episode_length
        self.render_mode = render_mode
        task_seed = None if seed is None else seed % SEED_MODULUS
        self._env = _suite().load(domain, task, task_kwargs={"random": task_seed})
        make_cheap_to_render(self._env.physics.model, max(SUPERSAMPLE * image_size, RENDER_SIZE))
        self._closed = False
        self._steps = 0
        self.metadata = {**self.metadata, "render_fps": round(1.0 / self.control_period)}

        spec = self._env.action_spec()
        self._action_low = np.asarray(spec.minimum, dtype=np.float64) * np.ones(spec.shape)
        self._action_high = np.asarray(spec.maximum, dtype=np.float64) * np.ones(spec.shape)
        _check_finite_bounds(f"dmc:{name}", self._action_low, self._action_high)
        # Sorted keys: a flattening order that does not depend on how the task built its dict.
        self._obs_keys = sorted(self._env.observation_spec())
        dims = sum(int(np.prod(self._env.observation_spec()[k].shape)) for k in self._obs_keys)
        observation = {"proprio": spaces.Box(-np.inf, np.inf, shape=(dims,), dtype=np.float32)}
        if pixels:
            observation["image"] = image_space(image_size)
        self.observation_space = spaces.Dict(observation)
        self.action_space = unit_action_space(tuple(spec.shape))

    @property
    def env_steps_per_episode(self) -> int | None:
        """Physics control steps in a whole episode (action repeat counted): the task's time limit
        (1000 for the suite's tasks but lqr's), or episode_length x action_repeat when that is
        shorter; None for a task without a time limit (lqr) run with no episode_length."""
        limit = self._env._step_limit  # dm_control's own count, from the task's time limit (inf: none)
        if self.episode_length:
            limit = min(limit, self.episode_length * self.action_repeat)
        return None if math.isinf(limit) else round(limit)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """A new episode; `seed` reseeds the task's own RNG, which draws the initial state."""
        super().reset(seed=seed)
        if seed is not None:
            self._env.task.random.seed(seed % SEED_MODULUS)
        time_step = self._env.reset()
        self._steps = 0
        return self._observation(time_step.observation), {}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        inner_action = rescale_action(action, self._action_low, self._action_high)
        total = 0.0
        for _ in range(self.action_repeat):
            time_step = self._env.step(inner_action)
            total += float(time_step.reward or 0.0)
            if time_step.last():
                break
        self._steps += 1
        # dm_control ends an episode with discount 0 on failure and 1 at its time limit.
        terminated = bool(time_step.last() and time_step.discount == 0.0)
        truncated = bool(time_step.last() and not terminated) or (
            self.episode_length > 0 and self._steps >= self.episode_length
        )
        return self._observation(time_step.observation), total, terminated, truncated, {}

    def render(self) -> np.ndarray | None:
        """A (256, 256, 3) uint8 frame of camera 0 in 'rgb_array' mode; None otherwise."""
        if self.render_mode != "rgb_array":
            return None
        return self._env.physics.render(RENDER_SIZE, RENDER_SIZE, camera_id=0).copy()

    def close(self) -> None:
        """Free the physics and its rendering contexts; safe to call more than once."""
        if not self._closed:
            self._env.physics.free()
            self._closed = True

    def get_state(self) -> dict[str, np.ndarray]:
        """The MuJoCo state (time, qpos, qvel, act), for the episode file. The task's randomization
        that lives in its model (reacher's target, say) is not in it, so it cannot restore a scene."""
        return mujoco_state(self._env.physics.data)

    @property
    def control_period(self) -> float:
        """Seconds per agent step: the task's control time step times the action repeat."""
        return float(self._env.control_timestep()) * self.action_repeat

    def _observation(self, obs: dict[str, Any]) -> dict[str, np.ndarray]:
        flat = [np.asarray(obs[k], dtype=np.float64).reshape(-1) for k in self._obs_keys]
        out = {"proprio": np.concatenate(flat).astype(np.float32)}
        if self.pixels:
            side = SUPERSAMPLE * self.image_size
            out["image"] = resize_image(self._env.physics.render(side, side, camera_id=0), self.image_size)
        return out
