"""Two-hot regression: scalars survive the round trip, and the loss is smallest at the target."""

import torch

from worldmodel.twohot import TwoHot, symexp, symlog


def test_symlog_and_symexp_are_inverse():
    x = torch.tensor([-500.0, -1.0, 0.0, 0.3, 2.0, 1000.0])
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-5, atol=1e-6)


def test_encode_then_decode_recovers_the_scalar():
    th = TwoHot()
    x = torch.tensor([0.0, 0.37, 1.9, -3.0, 250.0])
    probs = th.encode(x)
    assert torch.allclose(probs.sum(-1), torch.ones(5))
    assert int((probs > 0).sum(-1).max()) <= 2  # at most two neighbouring bins
    assert torch.allclose(th.decode(probs.clamp_min(1e-12).log()), x, rtol=1e-3, atol=1e-3)


def test_values_beyond_the_range_clip_to_its_ends():
    th = TwoHot(bins=11, vmin=-2.0, vmax=2.0)
    probs = th.encode(torch.tensor([1e6, -1e6]))
    assert probs[0, -1] == 1 and probs[1, 0] == 1


def test_the_loss_is_smallest_for_logits_at_the_target():
    th = TwoHot()
    target = torch.tensor([5.0])
    at = th.encode(target).clamp_min(1e-9).log()
    off = th.encode(torch.tensor([50.0])).clamp_min(1e-9).log()
    assert float(th.loss(at, target)) < float(th.loss(off, target))


def test_a_nan_target_gives_a_nan_loss_not_an_index_error():
    th = TwoHot()
    loss = th.loss(torch.zeros(2, th.bins), torch.tensor([float("nan"), 1.0]))
    assert torch.isnan(loss[0]) and torch.isfinite(loss[1])
