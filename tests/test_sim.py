"""The Reach task, its contact audio, and `sim.make` / `observation_spec` / `control_period`."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim
from sim.audio import AUDIO_SAMPLE_RATE, ContactAudio
from sim.config import EnvConfig
from sim.reach import CONTROL_PERIOD, SUCCESS_RADIUS, ReachEnv, reach_reward, sample_target

LINK = 0.12  # m, both links of the arm


def fingertip_xy(shoulder: float, elbow: float) -> np.ndarray:
    """Planar forward kinematics of the arm, (2,)."""
    return LINK * np.array(
        [np.cos(shoulder) + np.cos(shoulder + elbow), np.sin(shoulder) + np.sin(shoulder + elbow)]
    )


def approach_state(env: ReachEnv, speed: float, gap: float = 0.002) -> dict[str, np.ndarray]:
    """The fingertip `gap` m before the pad's rim, the shoulder turning towards it at `speed` rad/s."""
    q = np.array([0.0, 1.0])
    tip = fingertip_xy(*q)
    radius, angle = np.linalg.norm(tip), np.arctan2(tip[1], tip[0])
    ahead = (SUCCESS_RADIUS + 0.010 + gap) / radius  # pad radius + fingertip radius + gap, as an arc
    state = env.get_state()
    state.update(
        time=np.zeros(1),
        qpos=np.array([q[0], q[1], 0.0]),
        qvel=np.array([speed, 0.0, 0.0]),
        target=radius * np.array([np.cos(angle + ahead), np.sin(angle + ahead)]),
    )
    return state


def loudness(audio: np.ndarray) -> float:
    return float(np.abs(audio).max())


@pytest.fixture
def env():
    e = ReachEnv(image_size=64)
    yield e
    e.close()


# ------------------------------------------------------------------------------------- API


def test_check_env_reach(env):
    check_env(env, skip_render_check=True)


def test_check_env_registered():
    made = gymnasium.make(sim.REACH_ID)
    try:
        check_env(made.unwrapped)  # has a spec: render modes and close are checked too
    finally:
        made.close()


def test_observation_keys_shapes_dtypes(env):
    obs, info = env.reset(seed=0)
    assert set(obs) == {"image", "proprio", "audio"}
    spec = sim.observation_spec(env.observation_space)
    assert spec == {"image": ((64, 64, 3), "uint8"), "proprio": ((8,), "float32"), "audio": ((800,), "float32")}
    for _ in range(3):
        for key, (shape, dtype) in spec.items():
            assert obs[key].shape == shape and obs[key].dtype == np.dtype(dtype), key
        assert obs in env.observation_space
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert 0.0 <= reward <= 1.0 and terminated is False
        assert set(info) >= {"success", "distance", "contact_force"}
    assert env.observation_space["audio"].shape == (int(AUDIO_SAMPLE_RATE * CONTROL_PERIOD),)


def test_image_shows_the_pad_in_red():
    e = ReachEnv(image_size=32)
    try:
        obs, _ = e.reset(seed=3)
        image = obs["image"].astype(int)
        red = (image[..., 0] > 150) & (image[..., 1] < 80) & (image[..., 2] < 80)
        assert obs["image"].shape == (32, 32, 3) and red.sum() >= 2
    finally:
        e.close()


def test_episode_is_truncated_at_its_length():
    e = sim.make(EnvConfig(name="reach", episode_length=4), seed=0)
    try:
        e.reset()
        flags = [e.step(np.zeros(2))[2:4] for _ in range(4)]
        assert flags == [(False, False)] * 3 + [(False, True)]
    finally:
        e.close()


def test_render_modes():
    e = ReachEnv(render_mode="rgb_array")
    try:
        e.reset(seed=0)
        frame = e.render()
        assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
    finally:
        e.close()
        e.close()  # closing twice is allowed
    e = ReachEnv()
    e.reset(seed=0)
    assert e.render() is None
    e.close()


# ------------------------------------------------------------------------------ determinism


def rollout(seed: int, steps: int = 20) -> list:
    e = ReachEnv()
    try:
        obs, _ = e.reset(seed=seed)
        rng = np.random.default_rng(123)
        out = [obs]
        for _ in range(steps):
            obs, reward, _, _, info = e.step(rng.uniform(-1, 1, size=2))
            out.append((obs, reward, info))
        return out
    finally:
        e.close()


def test_same_seed_same_episode():
    a, b = rollout(7), rollout(7)
    assert gymnasium.utils.env_checker.data_equivalence(a, b, exact=True)


def test_different_seed_different_target():
    a, b = rollout(7, steps=0), rollout(8, steps=0)
    assert not np.array_equal(a[0]["proprio"][6:8], b[0]["proprio"][6:8])


def test_make_seed_seeds_the_first_reset():
    e1, e2 = sim.make(EnvConfig(), seed=5), ReachEnv()
    try:
        assert np.array_equal(e1.reset()[0]["proprio"], e2.reset(seed=5)[0]["proprio"])
    finally:
        e1.close()
        e2.close()


def test_reach_without_pixels_neither_shows_nor_renders_an_image():
    with_image = sim.make(EnvConfig(), seed=3)
    without = sim.make(EnvConfig(pixels=False), seed=3)
    try:
        assert set(without.observation_space.spaces) == {"proprio", "audio"}
        check_env(without.unwrapped, skip_render_check=True)
        obs, _ = without.reset(seed=3)
        assert "image" not in obs and without.unwrapped._renderer is None
        obs_with, _ = with_image.reset(seed=3)
        assert np.array_equal(obs["proprio"], obs_with["proprio"])
        assert np.array_equal(without.step(np.ones(2))[0]["proprio"], with_image.step(np.ones(2))[0]["proprio"])
    finally:
        with_image.close()
        without.close()


def test_reach_refuses_an_action_repeat_it_would_ignore():
    with pytest.raises(ValueError, match="action_repeat must be 0 or 1, got 2"):
        sim.make(EnvConfig(action_repeat=2))


def test_targets_lie_in_the_annulus():
    rng = np.random.default_rng(0)
    radii = np.linalg.norm([sample_target(rng) for _ in range(500)], axis=1)
    assert radii.min() >= 0.06 and radii.max() <= 0.22


def test_state_replay_is_exact(env):
    env.reset(seed=2)
    rng = np.random.default_rng(0)
    for _ in range(5):
        env.step(rng.uniform(-1, 1, size=2))
    state = env.get_state()
    actions = rng.uniform(-1, 1, size=(10, 2))
    first = [env.step(a)[:2] for a in actions]
    env.set_state(state)
    second = [env.step(a)[:2] for a in actions]
    for (obs1, r1), (obs2, r2) in zip(first, second):
        assert np.array_equal(obs1["proprio"], obs2["proprio"]) and r1 == r2
        assert np.array_equal(obs1["image"], obs2["image"])


def test_model_xml_is_the_asset():
    xml = ReachEnv.model_xml()
    assert "<mujoco" in xml and 'name="pad"' in xml and xml == sim.reach.ASSET_PATH.read_text()


# --------------------------------------------------------------------------- reward, success


def test_fingertip_on_target_succeeds(env):
    env.reset(seed=0)
    state = env.get_state()
    state["target"] = fingertip_xy(*state["qpos"][:2])
    env.set_state(state)
    _, reward, _, _, info = env.step(np.zeros(2))
    assert info["success"] and reward > 0.99 and info["distance"] < 0.005
    assert info["contact_force"] > 0.0  # the fingertip rests on the pad


def test_far_from_target_fails(env):
    env.reset(seed=0)
    state = env.get_state()
    state["target"] = -fingertip_xy(*state["qpos"][:2]) * 0.5  # across the base
    env.set_state(state)
    _, reward, _, _, info = env.step(np.zeros(2))
    assert not info["success"] and reward < 0.5 and info["contact_force"] == 0.0


def test_reward_shape():
    assert reach_reward(0.0) == 1.0 and reach_reward(SUCCESS_RADIUS * 0.99) == 1.0
    distances = np.linspace(SUCCESS_RADIUS, 0.45, 50)
    rewards = np.array([reach_reward(d) for d in distances])
    assert np.all(np.diff(rewards) < 0) and rewards[-1] > 0.0


# ------------------------------------------------------------------------------------ audio


def touch_episode(env: ReachEnv, speed: float) -> list[tuple[np.ndarray, float]]:
    """(audio, contact force) of 4 coasting steps that slide the fingertip onto the pad."""
    env.reset(seed=0)
    env.set_state(approach_state(env, speed))
    out = []
    for _ in range(4):
        obs, _, _, _, info = env.step(np.zeros(2))
        out.append((obs["audio"], info["contact_force"]))
    return out


def test_touching_the_pad_is_heard(env):
    steps = touch_episode(env, speed=3.0)
    touch = next(i for i, (_, force) in enumerate(steps) if force > 0.0)
    assert all(loudness(audio) == 0.0 for audio, _ in steps[:touch])
    assert loudness(steps[touch][0]) > 0.05
    # the tone decays and a steady touch adds no new one
    assert loudness(steps[-1][0]) < loudness(steps[touch][0])


def test_far_from_the_pad_is_silent(env):
    env.reset(seed=1)
    for _ in range(10):
        obs, _, _, _, info = env.step(np.zeros(2))
        assert loudness(obs["audio"]) == 0.0 and info["contact_force"] == 0.0


def test_faster_touch_is_louder(env):
    slow = max(loudness(audio) for audio, _ in touch_episode(env, speed=0.5))
    fast = max(loudness(audio) for audio, _ in touch_episode(env, speed=10.0))
    assert 0.0 < slow < fast


def test_contact_audio_model():
    audio = ContactAudio(period=0.05, substeps=10, force_scale=1.0, impact_threshold=0.5)
    quiet = [{}] * 10
    pair = (1, 2)
    assert audio.samples_per_period == 800
    assert loudness(audio.period(quiet)) == 0.0
    touch = audio.period([{}] * 5 + [{pair: 1.0}] * 5)
    assert np.all(touch[:400] == 0.0) and loudness(touch[400:]) > 0.1  # onset at the touching step
    ringing = audio.period([{pair: 1.0}] * 10)  # steady contact: only the carried-over tail
    assert 0.0 < loudness(ringing) < loudness(touch)
    impact = audio.period([{pair: 1.0}] * 3 + [{pair: 3.0}] * 7)  # a jump of 2 N > 0.5 N
    assert loudness(impact[240:]) > loudness(ringing)
    assert np.all(np.abs(impact) <= 1.0) and impact.dtype == np.float32


def test_contact_audio_louder_with_force_and_deterministic():
    def strike(force: float) -> np.ndarray:
        audio = ContactAudio(period=0.05, substeps=10, force_scale=1.0)
        return audio.period([{(0, 3): force}] + [{}] * 9)

    soft, hard = strike(0.2), strike(2.0)
    assert 0.0 < loudness(soft) < loudness(hard)
    assert np.array_equal(hard, strike(2.0))


def test_contact_audio_rejects_wrong_substeps():
    audio = ContactAudio(period=0.05, substeps=10)
    with pytest.raises(ValueError, match="10 physics steps"):
        audio.period([{}] * 3)


# ------------------------------------------------------------------------- make and helpers


def test_make_dispatch_and_helpers():
    for name in ("reach", sim.REACH_ID):
        e = sim.make(EnvConfig(name=name, image_size=32))
        try:
            assert isinstance(e, ReachEnv) and e.observation_space["image"].shape == (32, 32, 3)
            assert sim.control_period(e) == pytest.approx(0.05)
        finally:
            e.close()
    assert sim.AUDIO_SAMPLE_RATE == 16000


@pytest.mark.parametrize("name", ["", "pendulum", "gym:", "dmc:", "mujoco:Reach"])
def test_bad_names_are_refused(name):
    with pytest.raises(ValueError, match="accepted forms"):
        sim.make(EnvConfig(name=name))


def test_observation_spec_refuses_non_dict():
    with pytest.raises(ValueError, match="Dict"):
        sim.observation_spec(gymnasium.spaces.Box(0, 1, shape=(2,)))
