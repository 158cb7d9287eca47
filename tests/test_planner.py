"""MPPI on a small hand-written model that implements the planner's world-model interface."""

import pytest
import torch

from planner.config import DeliberationConfig, PlannerConfig
from planner.deliberation import Deliberation
from planner.mppi import MPPI
from planner.promise import PromiseCheck


class PointMass:
    """z is a 2-D position; an action moves it by 0.1 * a; reward is minus the squared distance to a goal."""

    action_dim = 2

    def __init__(self, goal):
        self.goal = torch.tensor(goal)

    def step(self, z, a):
        return z + 0.1 * a

    def reward(self, z, a):
        return -((self.step(z, a) - self.goal) ** 2).sum(-1)

    def value(self, z, a, every_head=False):
        return self.reward(z, a) / (1 - 0.9)

    def policy(self, z, deterministic=False):
        return torch.zeros(z.shape[0], 2)  # a useless prior: the search must do the work

    def uncertainty(self, z, a):
        return torch.zeros(z.shape[0])


def planner(**kw):
    cfg = PlannerConfig(horizon=3, samples=512, iterations=8, elites=64, temperature=0.05, **kw)
    return MPPI(cfg, 2, torch.Generator().manual_seed(0))


def test_mppi_finds_the_optimum_of_a_known_model():
    model = PointMass([0.05, -0.03])
    action, trace = planner().plan(model, torch.zeros(2))
    # the best first move reaches the goal in one step: a = goal / 0.1
    assert torch.allclose(action, torch.tensor([0.5, -0.3]), atol=0.08), action
    assert trace.iterations == 8
    assert trace.best_return <= 0 and trace.best_return > -0.01
    assert torch.allclose(trace.expected_latent, model.step(torch.zeros(1, 2), action[None])[0])


def test_mppi_ranks_candidates_whose_return_is_not_a_number_last():
    class Broken(PointMass):  # moving right along x breaks the model: NaN
        def reward(self, z, a):
            r = super().reward(z, a)
            return torch.where(a[..., 0] > 0, torch.full_like(r, float("nan")), r)

    action, trace = planner().plan(Broken([-0.05, 0.0]), torch.zeros(2))
    assert torch.isfinite(action).all() and action[0] <= 0 and trace.best_return > -0.01


class ShiftingValue(PointMass):
    """PointMass whose value moves by an offset drawn afresh for each call, the same for every
    candidate in it: what a random pair of Q heads (worldmodel.value_heads=2) does to the value."""

    def __init__(self, goal, spread=5.0):
        super().__init__(goal)
        self.spread, self.gen = spread, torch.Generator().manual_seed(1)

    def value(self, z, a, every_head=False):
        shift = 0.0 if every_head else self.spread * float(torch.rand((), generator=self.gen))
        return super().value(z, a) + shift


@pytest.mark.parametrize("goal", [[0.05, -0.03], [-0.08, 0.02], [0.2, 0.2]])
def test_mppi_commits_as_it_would_if_its_value_did_not_shift_between_calls(goal):
    """Scores from different calls do not compare when the value shifts between calls: the final
    choice between the refined mean and each round's best sample scores them in one call."""
    steady, _ = planner().plan(PointMass(goal), torch.zeros(2))
    shifting, _ = planner().plan(ShiftingValue(goal), torch.zeros(2))
    assert torch.allclose(steady, shifting, atol=1e-4), (steady, shifting)


def test_mppi_warm_start_shifts_the_last_plan():
    model = PointMass([0.3, 0.0])  # three steps away at full speed
    mppi = planner()
    mppi.plan(model, torch.zeros(2))
    assert mppi.mean is not None and mppi.mean[0, 0] > 0.8
    mppi.reset()
    assert mppi.mean is None


def test_mppi_stops_at_the_deadline_with_its_best_plan():
    class Slow(PointMass):
        def step(self, z, a):
            import time
            time.sleep(0.002)
            return super().step(z, a)

    action, trace = planner().plan(Slow([0.05, 0.05]), torch.zeros(2), iterations=10_000, deadline_s=0.05)
    assert 1 <= trace.iterations <= 3  # each iteration sleeps >= 14 ms: a fourth would end past 50 ms
    assert action.abs().max() <= 1


def test_mppi_starts_no_iteration_that_would_end_past_the_deadline(monkeypatch):
    clock = [0.0]

    class Clock:
        @staticmethod
        def perf_counter():
            return clock[0]

    class Ticking(PointMass):  # every latent step takes 5 ms of a clock the test owns
        def step(self, z, a):
            clock[0] += 0.005
            return super().step(z, a)

    monkeypatch.setattr("planner.mppi.time", Clock)
    model = Ticking([0.05, 0.05])
    spent = []
    for n in (1, 2):
        clock[0] = 0.0
        planner(policy_fraction=0.0).plan(model, torch.zeros(2), iterations=n)
        spent.append(clock[0])
    per_iteration = spent[1] - spent[0]
    _, trace = planner(policy_fraction=0.0).plan(model, torch.zeros(2), iterations=100, deadline_s=2.5 * per_iteration)
    assert trace.iterations == 2  # a third would have ended at 3 iterations' time, past the deadline


def test_deliberation_thinks_longer_after_a_surprise_and_drops_the_plan():
    d = Deliberation(DeliberationConfig(fast_path=False, think_min=0.5, think_max=2.0, replan_surprise=3.0,
                                        deadline_s=10.0), planner(), value_discount=0.9)  # iterations, not the clock
    model = PointMass([0.1, 0.1])
    for _ in range(20):
        d.observe(1.0)
    _, calm = d.decide(model, torch.zeros(2), explore=False)
    assert d.observe(10.0) is True  # far above the running mean: the warm start goes
    assert d.mppi.mean is None
    _, alarmed = d.decide(model, torch.zeros(2), explore=False)
    assert alarmed.iterations > calm.iterations


def test_deliberation_trusts_system_one_once_it_has_earned_it():
    """The prior (always 0) is right when the goal is where the point already is: after agreeing with
    the search, it acts alone in a calm moment. It never does when the search keeps overruling it."""
    cfg = DeliberationConfig(fast_path=True, fast_agreement=0.1, fast_surprise=0.5, fast_uncertainty=0.01,
                             surprise_ema=0.5)
    d = Deliberation(cfg, planner(), value_discount=0.9)
    d.observe(1.0)
    d.observe(0.1)  # much calmer than usual
    _, first = d.decide(PointMass([0.0, 0.0]), torch.zeros(2), explore=False)
    assert not first.fast_path  # nothing earned yet
    for _ in range(5):
        d.decide(PointMass([0.0, 0.0]), torch.zeros(2), explore=False)
    action, trace = d.decide(PointMass([0.0, 0.0]), torch.zeros(2), explore=False)
    assert trace.fast_path and trace.iterations == 0
    assert torch.equal(action, torch.zeros(2))

    stubborn = Deliberation(cfg, planner(), value_discount=0.9)
    stubborn.observe(1.0)
    stubborn.observe(0.1)
    far = PointMass([0.1, 0.1])  # the search moves at full speed; the prior says stand still
    assert not any(stubborn.decide(far, torch.zeros(2), explore=False)[1].fast_path for _ in range(8))


def test_a_value_that_comes_true_keeps_its_promise_and_one_that_never_does_breaks_it():
    g, window = 0.9, 5
    honest = PromiseCheck(window, g, tolerance=0.5)
    for _ in range(3 * window):  # reward 1 forever is worth 1 / (1 - g) = 10 from every state
        assert not honest.broken(10.0)
        honest.promised(10.0)
        honest.delivered(1.0)
    assert abs(honest.shortfall(10.0)) < 1e-9

    liar = PromiseCheck(window, g, tolerance=0.5)
    for _ in range(window):
        assert liar.shortfall(10.0) is None  # not a whole window walked yet
        liar.promised(10.0)
        liar.delivered(0.0)
    assert liar.shortfall(10.0) == pytest.approx(10.0 * (1 - g**window))  # nothing came, the value stayed
    assert liar.broken(10.0)
    # the reward arrives after all, two steps late: a short delay is within the tolerance
    late = PromiseCheck(window, g, tolerance=0.5)
    for r in (0.0, 0.0, 1.0, 1.0, 1.0):
        late.promised(10.0)
        late.delivered(r)
    assert 0 < late.shortfall(10.0) and not late.broken(10.0)

    liar.delivered(0.0)  # a reward with no promise (a random action): the path has a gap, start over
    assert liar.shortfall(10.0) is None

    for value in [10.0] * (window - 1) + [float("nan")]:  # a value gone NaN judges nothing, skews nothing
        late.promised(value)
        late.delivered(0.0)
    assert late.shortfall(10.0) is None and late.mean_abs_value == pytest.approx(10.0)


def test_a_promise_of_nothing_is_measured_against_the_usual_value():
    check = PromiseCheck(2, 0.9, tolerance=0.5)
    for _ in range(50):
        check.promised(10.0)
        check.delivered(1.0)
    for v in (0.01, 0.01):  # a state the value thinks worthless: noise must not break that promise
        check.promised(v)
        check.delivered(0.0)
    assert check.shortfall(-0.02) > 0.5 * (1 - 0.9**2) * 0.01  # it would, against |V| = 0.01 alone
    assert not check.broken(-0.02)


class Plateau(PointMass):
    """The value promises 10 everywhere and the search, which sees no reward anywhere, wanders; the
    prior always says [0.5, -0.5]."""

    def reward(self, z, a):
        return torch.zeros(z.shape[0])

    def value(self, z, a, every_head=False):
        return torch.full((z.shape[0],), 10.0)

    def policy(self, z, deterministic=False):
        return torch.tensor([[0.5, -0.5]]).expand(z.shape[0], 2)


def plateau_deliberation(window, **kw):
    cfg = DeliberationConfig(promise_window=window, promise_tolerance=0.5, **{"fast_path": False, **kw})
    return Deliberation(cfg, planner(), value_discount=0.9)


def test_system_one_takes_over_for_a_window_when_the_search_keeps_promising_in_vain():
    window = 4
    d = plateau_deliberation(window)
    model, z = Plateau([0.0, 0.0]), torch.zeros(2)
    kinds = []
    for _ in range(3 * window + 2):
        action, trace = d.decide(model, z, explore=False)
        d.rewarded(0.0)  # the promised 10 never comes in
        kinds.append(trace.takeover)
        if trace.takeover:
            assert trace.iterations == 0 and torch.equal(action, torch.tensor([0.5, -0.5]))
    # a full window of search, then System 1 for a window, then a fresh trial for the search
    assert kinds == [False] * window + [True] * window + [False] * window + [True] * 2

    learning = plateau_deliberation(window)  # exploration noise alone makes the return fall short: not judged
    for _ in range(3 * window):
        assert not learning.decide(model, z, explore=True)[1].takeover
        learning.rewarded(0.0)

    off = Deliberation(DeliberationConfig(fast_path=False, promise_window=0), planner(), value_discount=0.9)
    for _ in range(3 * window):
        off.rewarded(0.0)
        assert not off.decide(model, z, explore=False)[1].takeover


class ShiftingPlateau(Plateau):
    """Plateau whose value of 10 moves by up to +5 from call to call, as a random pair of heads would;
    read from every head, it is 10."""

    def __init__(self):
        super().__init__([0.0, 0.0])
        self.gen = torch.Generator().manual_seed(1)

    def value(self, z, a, every_head=False):
        shift = 0.0 if every_head else 5.0 * float(torch.rand((), generator=self.gen))
        return super().value(z, a) + shift


def test_a_promise_kept_exactly_is_judged_on_every_head_not_a_random_pair():
    """Each step brings (1 - g) * 10 and the value is 10: the promise is kept to the last digit. A
    value read from a random pair of heads, one pair for the promise and another for the check,
    would break it."""
    d = plateau_deliberation(4)
    model, z = ShiftingPlateau(), torch.zeros(2)
    for _ in range(20):
        assert not d.decide(model, z, explore=False)[1].takeover
        d.rewarded(1.0)


def test_an_evaluation_aside_and_a_hold_leave_the_promises_as_they_should():
    window = 4
    d = plateau_deliberation(window)
    model, z = Plateau([0.0, 0.0]), torch.zeros(2)
    for _ in range(window - 1):  # a window not yet full
        d.decide(model, z, explore=False)
        d.rewarded(0.0)
    kept = d.promise.state()
    with d.aside():  # an evaluation between episodes starts its own episodes, and gives the window back
        d.new_episode()
        for _ in range(window + 1):
            d.decide(model, z, explore=False)
            d.rewarded(0.0)
        assert d.takeover_left > 0
    assert d.promise.state() == kept and d.takeover_left == 0
    d.interrupted()  # a robot held on a stale observation: what was promised before does not carry over
    assert d.promise.shortfall(10.0) is None and len(d.promise.values) == 0
    for _ in range(window):
        assert not d.decide(model, z, explore=False)[1].takeover
        d.rewarded(0.0)


def test_system_one_calm_steps_are_not_held_against_the_search():
    """Steps taken on the fast path promise nothing: a window of them cannot hand System 1 over to itself."""
    d = plateau_deliberation(2, fast_path=True, fast_agreement=10.0, fast_surprise=10.0, fast_uncertainty=1.0)
    model, z = Plateau([0.0, 0.0]), torch.zeros(2)
    d.decide(model, z, explore=False)  # one searched step earns the fast path (any agreement passes)
    d.rewarded(0.0)
    for _ in range(6):
        _, trace = d.decide(model, z, explore=False)
        d.rewarded(0.0)
        assert trace.fast_path and not trace.takeover


def test_a_non_finite_surprise_or_disagreement_never_sticks_in_the_running_means():
    """A NaN in an observation makes that step's surprise NaN: the search starts afresh, and the means
    that budget thinking, replanning and the fast path carry on from their last finite values."""
    d = Deliberation(DeliberationConfig(surprise_ema=0.5), planner(), value_discount=0.9)
    d.observe(1.0)
    assert d.observe(float("nan")) and d.surprise_mean == 1.0
    assert d._ema(0.2, float("nan")) == 0.2 and d._ema(None, float("inf")) is None and d._ema(0.2, 0.4) == pytest.approx(0.3)
    d.observe(0.5)
    assert d.surprise_mean == 0.75
