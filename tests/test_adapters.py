"""The `gym:` and `dmc:` adapters: API conformance, observation dicts, actions, seeding, errors."""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env, data_equivalence

import sim
from sim.adapters import DMCAdapter, GymAdapter, rescale_action
from sim.config import EnvConfig

# Expected from the checker for these tasks: their state observations are unbounded, and
# adapters built outside gymnasium.make have no spec to re-make them with other render modes.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*Box observation space m.*infinity"),
    pytest.mark.filterwarnings("ignore:.*Not able to test alternative render modes"),
]


def make(name: str, pixels: bool = True, seed: int | None = None, **kw) -> gymnasium.Env:
    return sim.make(EnvConfig(name=name, pixels=pixels, **kw), seed=seed)


def rollout(name: str, seed: int, pixels: bool, steps: int = 20) -> list:
    env = make(name, pixels=pixels)
    try:
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(0)
        out = [obs]
        for _ in range(steps):
            obs, reward, terminated, truncated, _ = env.step(rng.uniform(-1, 1, size=env.action_space.shape))
            out.append((obs, reward, terminated, truncated))
        return out
    finally:
        env.close()


# ------------------------------------------------------------------------------ check_env


@pytest.mark.parametrize(
    "name, pixels",
    [("gym:InvertedPendulum-v5", True), ("dmc:reacher-easy", False), ("dmc:cartpole-swingup", True)],
)
def test_check_env(name, pixels):
    env = make(name, pixels=pixels, seed=0)
    try:
        check_env(env)
    finally:
        env.close()


@pytest.mark.parametrize(
    "name, pixels, proprio",
    [("gym:InvertedPendulum-v5", True, 4), ("gym:Reacher-v5", False, 10), ("dmc:reacher-easy", True, 6)],
)
def test_observation_dict(name, pixels, proprio):
    env = make(name, pixels=pixels, image_size=32)
    try:
        expected = {"proprio": ((proprio,), "float32")}
        if pixels:
            expected["image"] = ((32, 32, 3), "uint8")
        assert sim.observation_spec(env.observation_space) == expected
        obs, _ = env.reset(seed=0)
        obs, *_ = env.step(env.action_space.sample())
        assert set(obs) == set(expected) and obs in env.observation_space
        assert env.action_space == spaces.Box(-1.0, 1.0, shape=env.action_space.shape, dtype=np.float32)
    finally:
        env.close()


# ---------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name, pixels", [("gym:InvertedPendulum-v5", True), ("dmc:reacher-easy", True)])
def test_same_seed_same_episode(name, pixels):
    assert data_equivalence(rollout(name, 3, pixels), rollout(name, 3, pixels), exact=True)


@pytest.mark.parametrize("name", ["gym:InvertedPendulum-v5", "dmc:reacher-easy"])
def test_different_seed_different_start(name):
    a, b = rollout(name, 3, False, steps=0), rollout(name, 4, False, steps=0)
    assert not np.array_equal(a[0]["proprio"], b[0]["proprio"])


def test_dmc_make_seed_matches_reset_seed():
    seeded, fresh = make("dmc:reacher-easy", pixels=False, seed=11), make("dmc:reacher-easy", pixels=False)
    try:
        assert np.array_equal(seeded.reset()[0]["proprio"], fresh.reset(seed=11)[0]["proprio"])
    finally:
        seeded.close()
        fresh.close()


# -------------------------------------------------------------------------------- actions


def test_rescale_action():
    low, high = np.array([-2.0, 0.0]), np.array([2.0, 10.0])
    assert np.allclose(rescale_action(np.array([-1.0, -1.0]), low, high), low)
    assert np.allclose(rescale_action(np.array([1.0, 1.0]), low, high), high)
    assert np.allclose(rescale_action(np.array([0.0, 0.5]), low, high), [0.0, 7.5])
    assert np.allclose(rescale_action(np.array([5.0, -5.0]), low, high), [2.0, 0.0])  # clipped


def test_gym_actions_reach_the_original_bounds():
    env = make("gym:InvertedPendulum-v5", pixels=False)  # its action space is Box(-3, 3)
    try:
        assert isinstance(env, GymAdapter)
        inner = env._env.unwrapped
        env.reset(seed=0)
        env.step(np.ones(1, dtype=np.float32))
        assert np.allclose(inner.data.ctrl, 3.0)
        env.step(-np.ones(1, dtype=np.float32))
        assert np.allclose(inner.data.ctrl, -3.0)
    finally:
        env.close()


# ----------------------------------------------------------------------------- time limits


def test_dmc_truncates_at_its_time_limit():
    env = make("dmc:reacher-easy", pixels=False)  # 1000 control steps, repeat 2: 500 agent steps
    try:
        assert isinstance(env, DMCAdapter) and env.action_repeat == 2
        env.reset(seed=0)
        zero = np.zeros(env.action_space.shape, dtype=np.float32)
        flags = [env.step(zero)[2:4] for _ in range(500)]
        assert flags[-1] == (False, True) and all(f == (False, False) for f in flags[:-1])
        assert sim.control_period(env) == pytest.approx(0.04)
        assert env.env_steps_per_episode == 1000
    finally:
        env.close()


def test_dmc_episode_length_and_repeat_from_config():
    env = make("dmc:cartpole-swingup", pixels=False, action_repeat=4, episode_length=3)
    try:
        env.reset(seed=0)
        flags = [env.step(np.zeros(1, dtype=np.float32))[3] for _ in range(3)]
        assert flags == [False, False, True] and sim.control_period(env) == pytest.approx(0.04)
        assert env.env_steps_per_episode == 12
    finally:
        env.close()
    env = make("dmc:lqr-lqr_2_1", pixels=False)  # a task without a time limit
    try:
        assert env.env_steps_per_episode is None
    finally:
        env.close()


def test_gym_control_period_and_episode_length_count_agent_steps():
    env = make("gym:InvertedPendulum-v5", pixels=False, action_repeat=2, episode_length=3)
    try:
        assert sim.control_period(env) == pytest.approx(0.08)
        env.reset(seed=0)
        flags = [env.step(np.zeros(1, dtype=np.float32))[3] for _ in range(3)]
        assert flags == [False, False, True]  # 3 agent steps of 2 inner ones, not 3 inner steps
    finally:
        env.close()
    env = make("gym:MountainCarContinuous-v0", pixels=False, action_repeat=2)  # no dt: its render rate, 30 Hz
    try:
        assert sim.control_period(env) == pytest.approx(2 / 30) and env.metadata["render_fps"] == pytest.approx(15)
    finally:
        env.close()


# ----------------------------------------------------------------------------- info, errors


class _SucceedingEnv(gymnasium.Env):
    """A tiny Box env whose info carries `success`, to check that it is passed through."""

    observation_space = spaces.Box(-1.0, 1.0, shape=(2, 2), dtype=np.float64)
    action_space = spaces.Box(0.0, 4.0, shape=(1,), dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, size=(2, 2)), {}

    def step(self, action):
        return np.full((2, 2), float(action[0]) / 4.0), 1.0, False, False, {"success": bool(action[0] > 2.0)}


if "omniloop_test/Succeeding-v0" not in gymnasium.registry:
    gymnasium.register(id="omniloop_test/Succeeding-v0", entry_point=_SucceedingEnv)


def test_gym_images_are_the_same_whether_or_not_the_env_renders_for_people():
    """An env made with render_mode='rgb_array' (for videos) sees the pixels the trained one saw."""
    frames = []
    for render_mode in (None, "rgb_array"):
        env = GymAdapter("InvertedPendulum-v5", image_size=32, pixels=True, render_mode=render_mode)
        try:
            obs, _ = env.reset(seed=3)
            frames.append(obs["image"])
        finally:
            env.close()
    np.testing.assert_array_equal(frames[0], frames[1])


def test_gym_success_is_passed_through_and_obs_flattened():
    env = make("gym:omniloop_test/Succeeding-v0", pixels=False)
    try:
        obs, _ = env.reset(seed=0)
        assert obs["proprio"].shape == (4,) and obs["proprio"].dtype == np.float32
        obs, _, _, _, info = env.step(np.array([1.0], dtype=np.float32))  # -> 4.0 in the original bounds
        assert info["success"] is True and np.allclose(obs["proprio"], 1.0)
        assert env.step(np.array([-1.0], dtype=np.float32))[4]["success"] is False
    finally:
        env.close()


def test_gym_without_success_has_none():
    env = make("gym:InvertedPendulum-v5", pixels=False)
    try:
        env.reset(seed=0)
        assert "success" not in env.step(env.action_space.sample())[4]
    finally:
        env.close()


def test_non_box_space_is_refused():
    with pytest.raises(ValueError, match=r"CartPole-v1.*action space must be a Box.*Discrete"):
        make("gym:CartPole-v1")


@pytest.mark.parametrize(
    "name, message",
    [
        ("gym:NoSuchEnv-v0", "unknown Gymnasium env id 'NoSuchEnv-v0'"),
        ("dmc:reacher", "DOMAIN-TASK"),
        ("dmc:nosuch-easy", "unknown dm_control domain 'nosuch'"),
        ("dmc:reacher-nosuch", "unknown dm_control task 'nosuch'.*easy, hard"),
    ],
)
def test_bad_names_are_refused(name, message):
    with pytest.raises(ValueError, match=message):
        make(name)


def test_dmc_task_names_with_underscores():
    env = make("dmc:cartpole-swingup_sparse", pixels=False)
    try:
        obs, _ = env.reset(seed=0)
        assert obs["proprio"].shape == (5,)
    finally:
        env.close()


def test_pixels_only_with_stacked_frames():
    """TD-MPC2's pixel setting: no state vector, the last 3 frames along the channels, newest last."""
    env = sim.make(EnvConfig(name="dmc:reacher-easy", image_size=32, pixels=True, proprio=False, frame_stack=3), seed=0)
    try:
        with warnings.catch_warnings():  # check_env would rather see an unwrapped env: the stack is what we check
            warnings.simplefilter("ignore", UserWarning)
            check_env(env, skip_render_check=True)
        first, _ = env.reset(seed=1)
        assert set(first) == {"image"} and first["image"].shape == (32, 32, 9)
        assert env.observation_space["image"].shape == (32, 32, 9)
        assert np.array_equal(first["image"][..., :3], first["image"][..., 6:])  # the first frame, three times
        second, *_ = env.step(np.ones(2, np.float32))
        assert np.array_equal(second["image"][..., :6], first["image"][..., 3:])  # shifted by one frame
        assert not np.array_equal(second["image"][..., 6:], first["image"][..., 6:])
        assert np.array_equal(sim.newest_frame(second["image"]), second["image"][..., 6:])
    finally:
        env.close()


def test_stacking_needs_an_image_and_dropping_needs_something_left():
    with pytest.raises(ValueError, match="frame stacking needs"):
        sim.make(EnvConfig(name="dmc:reacher-easy", pixels=False, frame_stack=2), seed=0)
    with pytest.raises(ValueError, match="empty"):
        sim.make(EnvConfig(name="dmc:reacher-easy", pixels=False, proprio=False), seed=0)
