"""Shapes through every head, MoE routing and balance, and a learner that learns."""

import math

import pytest
import torch

from worldmodel.config import LearnerConfig, MoEConfig, WorldModelConfig
from worldmodel.learner import Batch, Learner
from worldmodel.model import WorldModel
from worldmodel.moe import MoE, balance_loss, make_ffn, reset_router_stats
from worldmodel.tokenizers import ImageTokenizer

SPEC = {"image": (64, 64, 3), "proprio": (8,), "audio": (800,), "instruction": (32,)}


def observations(b, spec=SPEC, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = {}
    for k, shape in spec.items():
        if k == "image":
            obs[k] = torch.randint(0, 256, (b, *shape), generator=g, dtype=torch.uint8)
        elif k == "instruction":
            text = torch.zeros(b, *shape, dtype=torch.uint8)
            text[:, :5] = torch.tensor(list(b"reach"), dtype=torch.uint8)
            obs[k] = text
        else:
            obs[k] = torch.randn(b, *shape, generator=g)
    return obs


def small_config(**moe):
    return WorldModelConfig(latent_dim=32, d_model=32, head_hidden=64, dynamics_width=32,
                            moe=MoEConfig(num_experts=4, top_k=2, expert_hidden=32, **moe))


@pytest.mark.parametrize("dense", [False, True])
def test_shapes_through_every_head(dense):
    torch.manual_seed(0)
    cfg = small_config(dense=dense)
    model = WorldModel(SPEC, action_dim=3, cfg=cfg)
    b = 5
    z = model.encode(observations(b))
    a = torch.rand(b, 3) * 2 - 1
    assert z.shape == (b, 32)
    # SimNorm: every group of simnorm_dim sums to one
    assert torch.allclose(z.reshape(b, -1, cfg.simnorm_dim).sum(-1), torch.ones(b, 32 // cfg.simnorm_dim), atol=1e-5)
    assert model.step(z, a).shape == (b, 32)
    assert model.reward(z, a).shape == (b,)
    assert model.q(z, a).shape == (cfg.num_q, b)
    assert model.value(z, a).shape == (b,)
    assert model.uncertainty(z, a).shape == (b,)
    pi = model.policy(z)
    assert pi.shape == (b, 3) and pi.abs().max() <= 1
    img = model.decode(z)
    assert img.shape == (b, 64, 64, 3) and img.min() >= 0 and img.max() <= 1
    stats = model.router_stats()
    assert (stats == {}) if dense else set(stats) == {"moe_max_load", "moe_entropy", "moe_dropped"}


def test_q_of_chosen_heads_is_those_heads_of_the_whole_ensemble():
    # the learner's TD target runs only the 2 heads it takes the lower of; they must be the same numbers
    torch.manual_seed(0)
    model = WorldModel({"proprio": (6,)}, action_dim=2, cfg=small_config())
    for p in [*model.q_heads.parameters(), *model.target_q.parameters()]:  # the last layers start at 0
        p.data.normal_(0, 0.3)
    z, a = torch.randn(7, 32).softmax(-1), torch.rand(7, 2) * 2 - 1
    heads = torch.tensor([3, 1])
    with torch.no_grad():
        for target in (False, True):
            q_all = model.q(z, a, target=target)
            # equal but for the last bits: a batched matmul of 2 matrices may split its work unlike one of 5
            assert torch.allclose(model.q(z, a, target=target, heads=heads), q_all[heads], rtol=1e-5, atol=1e-6)
            assert not torch.allclose(q_all[3], q_all[1], rtol=1e-2, atol=1e-2)


def test_state_only_observations_build_a_model_without_decoder():
    model = WorldModel({"proprio": (5,)}, 1, small_config())
    z = model.encode({"proprio": torch.randn(4, 5)})
    assert z.shape == (4, 32) and model.decoder is None
    with pytest.raises(RuntimeError, match="no image decoder"):
        model.decode(z)


def test_unknown_observation_key_is_named():
    with pytest.raises(ValueError, match="lidar"):
        WorldModel({"lidar": (100,)}, 1, small_config())


def test_image_patch_matmul_equals_the_conv_on_scaled_pixels(monkeypatch):
    """The first conv runs as a chunked patch matmul on uint8 pixels: same output and weight gradients."""
    torch.manual_seed(0)
    monkeypatch.setattr(ImageTokenizer, "CHUNK_BYTES", 3 * 16 * 16 * 6 * 4)  # 3 images a chunk: 7 -> 3 + 3 + 1
    tok = ImageTokenizer(16, 2, 32, channels=6)
    image = torch.randint(0, 256, (7, 16, 16, 6), dtype=torch.uint8)
    ours = tok(image)
    ours.square().sum().backward()
    grads = [p.grad.clone() for p in tok.parameters()]
    tok.zero_grad()
    x = tok.stem(image.permute(0, 3, 1, 2).float() / 255.0 - 0.5)
    ref = tok.proj(x.flatten(2).transpose(1, 2)) + tok.pos
    ref.square().sum().backward()
    torch.testing.assert_close(ours, ref)
    for g, p in zip(grads, tok.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_each_token_reaches_exactly_k_experts():
    torch.manual_seed(0)
    moe = MoE(16, MoEConfig(num_experts=8, top_k=2, expert_hidden=8))
    x = torch.randn(300, 16)
    probs = torch.softmax(moe.router(x), -1)
    chosen = probs.topk(2, -1).indices
    assert all(len(set(row.tolist())) == 2 for row in chosen)
    # the layer's output equals the explicit sum over the k chosen experts with renormalized gates
    out = moe(x)
    gate = probs.gather(1, chosen)
    gate = gate / gate.sum(-1, keepdim=True)
    expected = torch.zeros_like(x)
    for slot in range(2):
        for n in range(300):
            e = chosen[n, slot]
            h = torch.nn.functional.silu(x[n] @ moe.w1[e] + moe.b1[e])
            expected[n] += gate[n, slot] * (h @ moe.w2[e] + moe.b2[e])
    assert torch.allclose(out, expected, atol=1e-5)
    assert moe.stats.load.sum().item() == pytest.approx(1.0)
    assert moe.stats.dropped == 0.0


def test_over_capacity_the_latest_slots_of_a_busy_expert_are_dropped():
    """With a capacity, each expert keeps the first C slots it was sent (in token order) and the rest
    contribute nothing; kept slots still get exactly their expert's output."""
    torch.manual_seed(1)
    e, k, n = 4, 2, 40
    moe = MoE(8, MoEConfig(num_experts=e, top_k=k, expert_hidden=8, capacity_factor=0.6))
    with torch.no_grad():
        moe.router.weight[0] += 1.0  # expert 0 is popular: it overflows
    x = torch.rand(n, 8)
    probs = torch.softmax(moe.router(x), -1)
    gate, chosen = probs.topk(k, -1)
    gate = gate / gate.sum(-1, keepdim=True)
    capacity = math.ceil(0.6 * n * k / e)
    expected, taken = torch.zeros_like(x), [0] * e
    for t in range(n):
        for slot in range(k):
            ex = int(chosen[t, slot])
            if taken[ex] < capacity:
                taken[ex] += 1
                h = torch.nn.functional.silu(x[t] @ moe.w1[ex] + moe.b1[ex])
                expected[t] += gate[t, slot] * (h @ moe.w2[ex] + moe.b2[ex])
    out = moe(x)
    dropped = n * k - sum(taken)
    assert dropped > 0
    assert torch.allclose(out, expected, atol=1e-5)
    assert moe.stats.dropped == pytest.approx(dropped / (n * k))


def test_a_capacity_no_expert_reaches_gives_the_same_output_and_gradients():
    """The fixed-capacity buffer (sync-free) and the busiest-expert buffer compute the same layer."""
    torch.manual_seed(2)
    free = MoE(8, MoEConfig(num_experts=4, top_k=2, expert_hidden=8))
    fixed = MoE(8, MoEConfig(num_experts=4, top_k=2, expert_hidden=8, capacity_factor=4.0))
    fixed.load_state_dict(free.state_dict())
    x = torch.randn(50, 8)
    out_free, out_fixed = free(x), fixed(x)
    assert torch.allclose(out_free, out_fixed, atol=1e-6)
    out_free.square().sum().backward()
    out_fixed.square().sum().backward()
    for a, b in zip(free.parameters(), fixed.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5)
    assert fixed.stats.dropped == 0.0


def lopsided_batch(split: str) -> tuple[MoE, torch.Tensor]:
    """A top-2-of-4 layer with random biases (they start at 0, where a bias from the wrong expert would
    not show) and 30 tokens that route alike. "even": near-copies of one token, so two experts take
    every slot; "uneven": 22 tokens go to experts 1 and 3, 8 to experts 1 and 2, expert 0 to none
    (runs of 30, 8 and 22 slots after an empty first one)."""
    torch.manual_seed(3)
    moe = MoE(8, MoEConfig(num_experts=4, top_k=2, expert_hidden=8))
    for bias in (moe.b1, moe.b2):
        bias.data.normal_()
    if split == "even":
        return moe, torch.randn(1, 8).expand(30, 8) + 0.01 * torch.randn(30, 8)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[:, 0] = torch.tensor([-5.0, 5.0, -5.0, 4.0])
        moe.router.weight[:, 1] = torch.tensor([-5.0, 5.0, 4.0, -5.0])
    x = 0.01 * torch.randn(30, 8)
    x[:22, 0] += 1.0
    x[22:, 1] += 1.0
    return moe, x


@pytest.mark.parametrize("split", ["even", "uneven"])
@pytest.mark.parametrize("grouped", [True, False])
def test_lopsided_routing_gives_the_explicit_sum_by_either_path(grouped, split, monkeypatch):
    """A planner's candidates share one start state and route alike: on the CPU the grouped matmul
    takes such slots as they are, elsewhere the padded buffer does. Either way the output and
    gradients are those of the explicit sum over the k chosen experts, and an expert nobody chose
    gets a zero gradient."""
    import worldmodel.moe as moe_module

    grouped_mm = getattr(torch.nn.functional, "grouped_mm", None)
    if grouped and grouped_mm is None:
        pytest.skip("this torch has no grouped matmul: the layer keeps the padded buffer, tested below")
    calls = []
    monkeypatch.setattr(torch.nn.functional, "grouped_mm", lambda *a, **kw: calls.append(1) or grouped_mm(*a, **kw),
                        raising=False)
    monkeypatch.setattr(moe_module, "GROUPED_MM", grouped)
    moe, x = lopsided_batch(split)
    probs = torch.softmax(moe.router(x), -1)
    gate, chosen = probs.topk(2, -1)
    counts = torch.bincount(chosen.flatten(), minlength=4).tolist()
    assert counts == [0, 30, 8, 22] if split == "uneven" else sorted(counts) == [0, 0, 30, 30]
    gate = gate / gate.sum(-1, keepdim=True)
    expected = torch.zeros_like(x)
    for t in range(30):
        for slot in range(2):
            e = int(chosen[t, slot])
            h = torch.nn.functional.silu(x[t] @ moe.w1[e] + moe.b1[e])
            expected[t] = expected[t] + gate[t, slot] * (h @ moe.w2[e] + moe.b2[e])
    out = moe(x)
    assert torch.allclose(out, expected, atol=1e-5)
    params = [moe.w1, moe.b1, moe.w2, moe.b2, moe.router.weight]
    grads = torch.autograd.grad(out.square().sum(), params)
    want = torch.autograd.grad(expected.square().sum(), params)
    for g, w in zip(grads, want):
        assert torch.allclose(g, w, atol=1e-5)
    idle = [e for e in range(4) if counts[e] == 0]
    assert all(grads[i][idle].abs().max() == 0 for i in range(4))  # w1, b1, w2, b2 of an idle expert
    assert moe.stats.load[idle].sum() == 0 and moe.stats.load.sum().item() == pytest.approx(1.0)
    assert bool(calls) == grouped  # the busiest expert takes every token: past the padded buffer's limit


def test_a_float64_layer_keeps_the_padded_buffer_however_lopsided(monkeypatch):
    # the grouped matmul is taken for float32 only: other dtypes keep the path every torch knows
    monkeypatch.setattr(torch.nn.functional, "grouped_mm", lambda *a, **kw: pytest.fail("grouped matmul ran"),
                        raising=False)
    moe, x = lopsided_batch("uneven")
    moe.double()
    assert moe(x.double()).dtype == torch.float64


def test_a_balanced_batch_keeps_the_padded_buffer(monkeypatch):
    # on a 2-core CPU the grouped matmul is slower than a buffer that pads little
    monkeypatch.setattr(torch.nn.functional, "grouped_mm", lambda *a, **kw: pytest.fail("grouped matmul ran"),
                        raising=False)
    torch.manual_seed(0)
    moe = MoE(16, MoEConfig(num_experts=4, top_k=2, expert_hidden=8))
    moe(torch.randn(500, 16))
    assert float(moe.stats.load.max() * 4) < 1.5


def test_a_value_of_two_heads_is_the_mean_of_two_heads_drawn_afresh():
    """value_heads=2 (TD-MPC2's planning and policy objective): each call averages 2 of the num_q
    heads, a different pair from call to call; value_heads=0 averages them all."""
    torch.manual_seed(0)
    model = WorldModel({"proprio": (6,)}, action_dim=2, cfg=small_config())
    for p in model.q_heads.parameters():
        p.data.normal_(0, 0.3)
    z, a = torch.randn(4, 32).softmax(-1), torch.rand(4, 2) * 2 - 1
    with torch.no_grad():
        q = model.q(z, a)  # (num_q, 4)
        assert torch.allclose(model.value(z, a), q.mean(0))
        model.cfg.value_heads = 2
        pairs = {(i, j): (q[i] + q[j]) / 2 for i in range(len(q)) for j in range(i + 1, len(q))}
        seen = set()
        for _ in range(40):
            v = model.value(z, a)
            match = [pair for pair, mean in pairs.items() if torch.allclose(v, mean, rtol=1e-5, atol=1e-6)]
            assert len(match) == 1
            seen.add(match[0])
            assert torch.allclose(model.value(z, a, every_head=True), q.mean(0))  # no draw
    assert len(seen) > 3


@pytest.mark.parametrize("heads", [-1, 6])
def test_a_world_model_refuses_value_heads_outside_its_ensemble(heads):
    cfg = small_config()
    cfg.value_heads = heads
    with pytest.raises(ValueError, match=r"worldmodel.value_heads must be in \[0, worldmodel.num_q=5\]"):
        WorldModel({"proprio": (6,)}, action_dim=2, cfg=cfg)


def test_top_1_routing_keeps_a_gradient_for_the_router():
    torch.manual_seed(0)
    moe = MoE(8, MoEConfig(num_experts=4, top_k=1, expert_hidden=8))
    moe(torch.randn(32, 8)).sum().backward()
    assert float(moe.router.weight.grad.abs().sum()) > 1e-2  # renormalized, it would be ~1e-7 (rounding)


def test_capacity_limit_drops_and_counts():
    torch.manual_seed(0)
    moe = MoE(8, MoEConfig(num_experts=4, top_k=1, expert_hidden=8, capacity_factor=0.5))
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 1.0  # everything wants expert 0
    moe(torch.rand(64, 8) + 0.1)
    assert moe.stats.dropped >= 0.5


def test_balance_loss_spreads_the_load_within_bound():
    """From a router that puts one expert in every token's top 2 (load 4x the mean), the balance loss
    alone brings every expert's load within 2x of the mean on random data."""
    torch.manual_seed(0)
    e = 8
    moe = MoE(16, MoEConfig(num_experts=e, top_k=2, expert_hidden=8))
    with torch.no_grad():
        moe.router.weight[0] += 0.5  # with inputs of positive mean, expert 0 is in every token's top 2
    x = torch.randn(2048, 16) + 1.0
    moe(x)
    assert moe.stats.load.max() * e > 3.0  # badly balanced to begin with
    opt = torch.optim.Adam(moe.router.parameters(), lr=0.01)
    for _ in range(300):
        reset_router_stats(moe)
        moe(torch.randn(512, 16) + 1.0)
        opt.zero_grad()
        balance_loss(moe).backward()
        opt.step()
    moe(x)
    assert float(moe.stats.load.max() * e) <= 2.0


def test_a_fresh_router_is_balanced_on_random_data():
    torch.manual_seed(0)
    moe = MoE(16, MoEConfig(num_experts=8, top_k=2, expert_hidden=8))
    moe(torch.randn(4096, 16))
    assert float(moe.stats.load.max() * 8) <= 1.5
    assert float(moe.stats.load.min() * 8) >= 0.5


def test_dense_switch_has_the_same_active_parameters():
    moe = make_ffn(32, MoEConfig(num_experts=8, top_k=2, expert_hidden=16))
    dense = make_ffn(32, MoEConfig(dense=True, num_experts=8, top_k=2, expert_hidden=16))
    active_moe = 2 * (moe.w1[0].numel() + moe.w2[0].numel())  # top_k experts' weights per token
    assert dense.fc1.weight.numel() + dense.fc2.weight.numel() == active_moe
    assert sum(p.numel() for p in moe.parameters()) > 3 * sum(p.numel() for p in dense.parameters())


def test_learner_lowers_its_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    spec = {"image": (64, 64, 3), "proprio": (8,), "audio": (800,)}
    model = WorldModel(spec, 2, small_config())
    learner = Learner(model, LearnerConfig(batch_size=16, horizon=3, lr=1e-3))
    b, h = 16, 3
    flat = observations(b * (h + 1), spec, seed=1)
    batch = Batch(
        obs={k: v.reshape(b, h + 1, *v.shape[1:]) for k, v in flat.items()},
        action=torch.rand(b, h, 2) * 2 - 1,
        reward=torch.rand(b, h),
        terminated=torch.zeros(b, h),
        weight=torch.ones(b),
    )
    first = learner.update(batch)
    for _ in range(60):
        last = learner.update(batch)
    assert last["reward_loss"] < 0.5 * first["reward_loss"]
    assert last["reconstruction_loss"] < first["reconstruction_loss"]
    assert last["loss"] < first["loss"]
    assert first["priority"].shape == (b,)


def test_learner_skips_a_non_finite_loss_and_keeps_its_weights():
    torch.manual_seed(0)
    model = WorldModel({"proprio": (4,)}, 1, small_config())
    learner = Learner(model, LearnerConfig(batch_size=4, horizon=2))
    before = [p.detach().clone() for p in model.parameters()]
    batch = Batch(obs={"proprio": torch.randn(4, 3, 4)}, action=torch.zeros(4, 2, 1),
                  reward=torch.tensor([[float("nan"), 0.0]] * 4), terminated=torch.zeros(4, 2), weight=torch.ones(4))
    with pytest.warns(UserWarning, match="non-finite loss"):
        out = learner.update(batch)
    assert out["skipped"] == 1.0 and learner.skipped == 1 and out["priority"] is None
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_learner_restores_the_last_good_weights_after_a_blow_up():
    """Weights that went non-finite (a blow-up a few steps back) come back from the last good snapshot,
    and learning goes on from there."""
    torch.manual_seed(0)
    model = WorldModel({"proprio": (4,)}, 1, small_config())
    learner = Learner(model, LearnerConfig(batch_size=4, horizon=2, snapshot_every=2))

    def batch() -> Batch:
        return Batch(obs={"proprio": torch.randn(4, 3, 4)}, action=torch.rand(4, 2, 1) * 2 - 1,
                     reward=torch.rand(4, 2), terminated=torch.zeros(4, 2), weight=torch.ones(4))

    for _ in range(3):
        learner.update(batch())
    good = {k: v.clone() for k, v in learner.good["model"].items()}
    with torch.no_grad():
        model.dynamics.out.weight[0, 0] = float("inf")
    with pytest.warns(UserWarning, match="last good weights restored"):
        out = learner.update(batch())
    assert out["restored"] == 1.0 and learner.restored == 1
    assert all(torch.equal(v, good[k]) for k, v in model.state_dict().items())
    assert learner.update(batch())["skipped"] == 0.0
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_input_statistics_leave_non_finite_rows_out_and_a_non_finite_buffer_is_never_a_good_snapshot():
    torch.manual_seed(0)
    model = WorldModel({"proprio": (4,)}, 1, small_config())
    learner = Learner(model, LearnerConfig(batch_size=4, horizon=2))
    x = torch.randn(50, 4)
    x[7, 2] = float("nan")  # one sensor reading that failed
    tokenizer = model.encoder.tokenizers["proprio"]
    tokenizer.fit(x)
    assert torch.allclose(tokenizer.shift, torch.cat([x[:7], x[8:]]).mean(0))
    learner.good = None
    tokenizer.scale[0] = float("nan")
    learner.snapshot()
    assert learner.good is None  # restoring it would restore the NaN


def test_n_step_targets_sum_rewards_then_bootstrap_and_stop_at_a_termination():
    from worldmodel.learner import n_step_targets

    reward = torch.tensor([[1.0, 2.0, 4.0]])
    q_next = torch.tensor([[10.0, 20.0, 40.0]])
    alive = torch.zeros(1, 3)
    g = 0.5
    one = n_step_targets(reward, alive, q_next, g, 1)
    assert torch.allclose(one, reward + g * q_next)  # the one-step target, unchanged
    three = n_step_targets(reward, alive, q_next, g, 3)
    expected = [1 + g * 2 + g**2 * 4 + g**3 * 40, 2 + g * 4 + g**2 * 40, 4 + g * 40]  # the window's end shortens n
    assert torch.allclose(three, torch.tensor([expected]))
    ended = n_step_targets(reward, torch.tensor([[0.0, 1.0, 0.0]]), q_next, g, 3)
    assert torch.allclose(ended[0, :2], torch.tensor([1 + g * 2, 2.0]))  # nothing after the termination
