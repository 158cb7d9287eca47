"""Replay memory: sequences stay inside episodes, and surprise sets how often a step is replayed."""

import numpy as np
import pytest

from agent.memory import Memory, MemoryConfig

SPEC = {"proprio": ((2,), "float32")}


def fill(memory, episodes, length, surprise=lambda e, t: 1.0):
    for e in range(episodes):
        for t in range(length):
            memory.add({"proprio": np.array([e, t], np.float32)}, np.array([t], np.float32), float(t), False,
                       surprise(e, t))
        memory.add({"proprio": np.array([e, length], np.float32)})


def test_sequences_never_cross_an_episode_boundary():
    m = Memory(MemoryConfig(capacity=1000), SPEC, 1, horizon=3, seed=0)
    fill(m, episodes=5, length=6)
    assert m.n_sequences == 5 * (6 - 3 + 1)
    batch, starts = m.sample(256)
    obs = batch["obs"]["proprio"]  # (B, H+1, 2)
    assert obs.shape == (256, 4, 2)
    assert (obs[:, :, 0] == obs[:, :1, 0]).all()  # one episode per sequence
    assert (np.diff(obs[:, :, 1], axis=1) == 1).all()  # consecutive steps
    assert np.array_equal(batch["action"][:, :, 0], obs[:, :-1, 1])
    assert batch["weight"].max() == pytest.approx(1.0)


def test_surprising_steps_are_replayed_more_often():
    m = Memory(MemoryConfig(capacity=1000, alpha=1.0), SPEC, 1, horizon=1, seed=0)
    fill(m, episodes=2, length=10, surprise=lambda e, t: 10.0 if (e, t) == (1, 4) else 1.0)
    batch, starts = m.sample(4000)
    hot = np.mean((batch["obs"]["proprio"][:, 0] == [1, 4]).all(-1))
    assert hot == pytest.approx(10 / 29, abs=0.03)  # 18 starts at 1 and one at 10
    m.update_priorities(starts, np.full(len(starts), 1.0))
    batch, _ = m.sample(4000)
    assert np.mean((batch["obs"]["proprio"][:, 0] == [1, 4]).all(-1)) < 0.1


def test_every_open_sequence_and_no_other_can_be_drawn():
    # alpha 0 (uniform) must still leave closed sequences undrawable (0 ** 0 is 1), and weighing only the
    # filled part of the ring must keep the sequence that ends at the newest step
    m = Memory(MemoryConfig(capacity=1000, alpha=0.0), SPEC, 1, horizon=3, seed=0)
    fill(m, episodes=2, length=5)
    _, starts = m.sample(2000)
    assert set(starts.tolist()) == set(np.flatnonzero(m.priority).tolist()) == {0, 1, 2, 6, 7, 8}


def test_the_ring_overwrites_old_sequences_cleanly():
    m = Memory(MemoryConfig(capacity=16), SPEC, 1, horizon=2, seed=0)
    fill(m, episodes=6, length=4)  # 30 entries through a ring of 16
    batch, _ = m.sample(500)
    obs = batch["obs"]["proprio"]
    assert (obs[:, :, 0] == obs[:, :1, 0]).all() and (np.diff(obs[:, :, 1], axis=1) == 1).all()
    assert obs[:, 0, 0].min() >= 3  # only the newest episodes remain


def test_state_round_trip():
    m = Memory(MemoryConfig(capacity=64), SPEC, 1, horizon=2, seed=0)
    fill(m, episodes=3, length=5)
    arrays, counters = m.state()
    n = Memory(MemoryConfig(capacity=64), SPEC, 1, horizon=2, seed=0)
    n.load_state(arrays, counters)
    assert n.n_sequences == m.n_sequences and n.ptr == m.ptr and n.episodes == m.episodes
    assert np.array_equal(n.priority, m.priority)


def test_a_wrapped_ring_loads_into_another_capacity_and_horizon():
    """--init may give the new run a bigger memory or a shorter horizon: the steps keep their order and
    exactly the sequences inside one episode can be drawn, as if the steps had been added there."""
    m = Memory(MemoryConfig(capacity=16), SPEC, 1, horizon=2, seed=0)
    fill(m, episodes=6, length=4)  # 30 entries: the ring wrapped, its write head mid-way
    assert 0 < m.ptr < m.size == 16
    arrays, counters = m.state()
    for capacity, horizon in ((64, 2), (20, 1), (16, 3)):
        n = Memory(MemoryConfig(capacity=capacity), SPEC, 1, horizon=horizon, seed=0)
        n.load_state(arrays, counters)
        rebuilt = Memory(MemoryConfig(capacity=capacity), SPEC, 1, horizon=horizon, seed=0)
        for t in np.roll(np.arange(16), -m.ptr):  # the same steps, oldest first
            obs = {"proprio": m.obs["proprio"][t]}
            rebuilt.add(obs, m.action[t] if m.has_action[t] else None, float(m.reward[t]), False, float(m.surprise[t]))
        assert n.n_sequences == rebuilt.n_sequences > 0, (capacity, horizon)
        batch, _ = n.sample(300)
        obs = batch["obs"]["proprio"]
        assert (obs[:, :, 0] == obs[:, :1, 0]).all() and (np.diff(obs[:, :, 1], axis=1) == 1).all()
        n.add({"proprio": np.array([9, 0], np.float32)}, np.array([0.0], np.float32))  # the head is in the ring
        assert n.ptr == ((m.ptr + 1) % 16 if capacity == 16 else 17)  # writing goes on after the newest step
    full = Memory(MemoryConfig(capacity=16), SPEC, 1, horizon=2, seed=0)
    fill(full, episodes=4, length=3)  # exactly 16 entries: full, its head back at 0
    assert (full.ptr, full.size) == (0, 16)
    bigger = Memory(MemoryConfig(capacity=64), SPEC, 1, horizon=2, seed=0)
    bigger.load_state(*full.state())
    assert bigger.ptr == 16 and bigger.n_sequences == full.n_sequences  # it writes into the room it has


def test_a_non_finite_surprise_leaves_sampling_defined():
    m = Memory(MemoryConfig(capacity=64), SPEC, 1, horizon=1, seed=0)
    fill(m, episodes=2, length=5, surprise=lambda e, t: float("nan") if t == 2 else 1.0)
    assert np.isfinite(m.priority).all() and m.n_sequences == 10
    _, starts = m.sample(8)
    before = m.priority.copy()
    m.update_priorities(starts, np.full(len(starts), np.nan))
    assert np.array_equal(m.priority, before)  # a NaN re-measurement keeps the old priority
    m.sample(8)


def test_sampling_an_empty_memory_says_why():
    m = Memory(MemoryConfig(capacity=8), SPEC, 1, horizon=3)
    with pytest.raises(RuntimeError, match="no complete sequence"):
        m.sample(4)
