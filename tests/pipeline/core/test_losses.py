"""The losses against hand computations (docs/design.md §2)."""

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.core.losses import (
    chord_loss,
    chord_mu,
    dcr_coefficients,
    dcr_diagnostics,
    dft_loss,
    gft_loss,
    grpo_loss,
    per_source_means,
    sft_loss,
)

# Two response tokens over a 3-word vocabulary, both with target word 0:
# token 0 is confident (p = e^2 / (e^2 + 2) ~ 0.787), token 1 is unlikely (p = 1 / (2 + e^3) ~ 0.045).
LOGITS = [[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]
P_CONFIDENT = math.exp(2) / (math.exp(2) + 2)
P_UNLIKELY = 1 / (2 + math.exp(3))
TARGETS = [0, 0]


def _token_log_probs(logits):
    """[1, 2] log-probs of the targets, with the [2, 3] logits leaf to differentiate against."""
    leaf = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    log_probs = torch.log_softmax(leaf, dim=-1)[torch.arange(2), TARGETS]
    return leaf, log_probs.unsqueeze(0)


def test_gft_loss_value_and_logit_gradient_above_and_below_tau():
    tau, advantage = 0.1, 0.7
    leaf, log_probs = _token_log_probs(LOGITS)
    mask = torch.ones(1, 2, dtype=torch.float64)
    loss, metrics = gft_loss(log_probs, torch.full((1, 2), advantage, dtype=torch.float64), mask, tau=tau)
    loss.backward()

    # confident token keeps c = 1, the unlikely one gets c = p (a constant)
    expected = (-advantage * math.log(P_CONFIDENT) - advantage * P_UNLIKELY * math.log(P_UNLIKELY)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # d(-A c log p_y)/dz = -A c (onehot_y - softmax(z)), averaged over the 2 tokens
    softmax_0 = [P_CONFIDENT, 1 / (math.exp(2) + 2), 1 / (math.exp(2) + 2)]
    softmax_1 = [P_UNLIKELY, math.exp(3) / (2 + math.exp(3)), P_UNLIKELY]
    grad_0 = [-advantage * 1.0 * ((k == 0) - softmax_0[k]) / 2 for k in range(3)]
    grad_1 = [-advantage * P_UNLIKELY * ((k == 0) - softmax_1[k]) / 2 for k in range(3)]
    torch.testing.assert_close(leaf.grad, torch.tensor([grad_0, grad_1], dtype=torch.float64))
    assert metrics["rectified_fraction"] == pytest.approx(0.5)
    assert metrics["mean_coefficient"] == pytest.approx((1 + P_UNLIKELY) / 2)


def test_padding_tokens_contribute_nothing():
    leaf, log_probs = _token_log_probs(LOGITS)
    mask = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    loss, _ = gft_loss(log_probs, torch.ones(1, 2, dtype=torch.float64), mask, tau=0.1)
    loss.backward()
    assert loss.item() == pytest.approx(-math.log(P_CONFIDENT))
    assert torch.all(leaf.grad[1] == 0)


def test_sft_equals_token_mean_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, dtype=torch.float64)
    targets = torch.randint(0, 11, (3, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.float64)
    log_probs = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    loss, _ = sft_loss(log_probs, mask)
    ignored = targets.masked_fill(mask == 0, -100)
    expected = F.cross_entropy(logits.reshape(-1, 11), ignored.reshape(-1), ignore_index=-100)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


def test_dft_is_probability_weighted_nll_with_detached_weight():
    p = torch.tensor([[0.9, 0.5, 0.01]], dtype=torch.float64, requires_grad=True)
    loss, metrics = dft_loss(p.log(), torch.ones_like(p))
    loss.backward()
    values = [0.9, 0.5, 0.01]
    assert loss.item() == pytest.approx(sum(-v * math.log(v) for v in values) / 3, rel=1e-12)
    # weight sg(p) times d(log p)/dp = 1/p: every token gets gradient -1/3 on its probability
    torch.testing.assert_close(p.grad, torch.full((1, 3), -1 / 3, dtype=torch.float64))
    assert metrics["rectified_fraction"] == 1.0


def test_gft_with_tau_near_zero_is_advantage_weighted_nll():
    torch.manual_seed(1)
    log_probs = torch.log(torch.rand(4, 6, dtype=torch.float64) * 0.98 + 0.01)
    advantages = torch.randn(4, 1, dtype=torch.float64).expand(4, 6)
    mask = (torch.rand(4, 6) > 0.3).double()
    loss, metrics = gft_loss(log_probs, advantages, mask, tau=1e-12)
    expected = (-advantages * log_probs * mask).sum() / mask.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert metrics["rectified_fraction"] == 0.0


@pytest.mark.parametrize("tau", [0.05, 0.1, 0.5])
def test_dcr_bounds_the_gradient_weight_where_sft_grows_as_inverse_probability(tau):
    probs = torch.logspace(-5, 0, 60, dtype=torch.float64)
    n = probs.numel()
    for advantage in (1.0, -2.5):
        p = probs.clone().requires_grad_(True)
        loss, _ = gft_loss(p.log()[None], torch.full((1, n), advantage, dtype=torch.float64), torch.ones(1, n), tau)
        loss.backward()
        weight = (p.grad * n).abs() / abs(advantage)
        assert weight.max().item() <= max(1.0, 1.0 / tau) * (1 + 1e-9)
        torch.testing.assert_close(weight[probs <= tau], torch.ones_like(weight[probs <= tau]))
        torch.testing.assert_close(weight[probs > tau], 1 / probs[probs > tau])

    p = probs.clone().requires_grad_(True)
    loss, _ = sft_loss(p.log()[None], torch.ones(1, n))
    loss.backward()
    torch.testing.assert_close(-p.grad * n, 1 / probs)
    assert (-p.grad * n).max().item() == pytest.approx(1e5)


def test_dcr_coefficients_are_detached():
    log_probs = torch.tensor([-0.01, -5.0], requires_grad=True)
    coefficients = dcr_coefficients(log_probs, 0.1)
    assert not coefficients.requires_grad
    torch.testing.assert_close(coefficients, torch.tensor([1.0, math.exp(-5.0)]))


def test_grpo_loss_is_the_clipped_surrogate_plus_low_variance_kl():
    log_probs = torch.tensor([[-1.0, -0.5, -2.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.5, -0.5, -1.9]], dtype=torch.float64)
    ref = torch.tensor([[-1.2, -0.4, -2.2]], dtype=torch.float64)
    advantages = torch.tensor([[1.0, -1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.float64)
    loss, metrics = grpo_loss(log_probs, old, advantages, mask, clip_ratio=0.2, kl_coef=0.1, ref_log_probs=ref)

    ratios = [math.exp(0.5), 1.0, math.exp(-0.1)]
    surrogate = []
    for r, a in zip(ratios, [1.0, -1.0, -1.0]):
        clipped = min(max(r, 0.8), 1.2)
        surrogate.append(max(-a * r, -a * clipped))
    kl = [math.exp(x - lp) - (x - lp) - 1 for x, lp in zip([-1.2, -0.4, -2.2], [-1.0, -0.5, -2.0])]
    expected = sum(surrogate) / 3 + 0.1 * sum(kl) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert metrics["clip_fraction"] == pytest.approx(1 / 3)  # only token 0 (ratio 1.65 > 1.2, A > 0)
    assert metrics["kl_loss"] == pytest.approx(sum(kl) / 3, rel=1e-12)


def test_grpo_loss_on_stale_rows_weighs_each_clipped_term_by_the_capped_behaviour_ratio():
    """Rows one step stale: the ratio against the proximal policy (the learner's before the
    update) is clipped as on-policy, and each token's term is multiplied by pi_prox / pi_behaviour,
    capped at 2; the weight carries no gradient."""
    log_probs = torch.tensor([[-1.0, -0.5, -2.0, -0.3]], dtype=torch.float64, requires_grad=True)
    prox = torch.tensor([[-1.5, -0.5, -1.9, -0.3]], dtype=torch.float64)
    behaviour = torch.tensor([[-1.6, -1.5, -1.7, -9.0]], dtype=torch.float64)  # token 3 masked out
    advantages = torch.tensor([[1.0, -1.0, 1.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    loss, metrics = grpo_loss(log_probs, prox, advantages, mask, clip_ratio=0.2, behaviour_log_probs=behaviour,
                              behaviour_weight_cap=2.0)
    loss.backward()

    ratios = [math.exp(0.5), 1.0, math.exp(-0.1)]
    raw = [math.exp(0.1), math.exp(1.0), math.exp(-0.2)]  # pi_prox / pi_behaviour: 1.105, 2.718 (capped), 0.819
    weights = [min(w, 2.0) for w in raw]
    terms, grads = [], []
    for r, a, w in zip(ratios, [1.0, -1.0, 1.0], weights):
        clipped = min(max(r, 0.8), 1.2)
        unclipped_wins = -a * r >= -a * clipped
        terms.append(w * max(-a * r, -a * clipped))
        grads.append(-w * a * r / 3 if unclipped_wins else 0.0)  # d/dlogp of w * (-a * exp(logp - prox))
    assert loss.item() == pytest.approx(sum(terms) / 3, rel=1e-12)
    torch.testing.assert_close(log_probs.grad, torch.tensor([[*grads, 0.0]], dtype=torch.float64))
    assert metrics["behaviour_weight_mean"] == pytest.approx(sum(weights) / 3, rel=1e-12)
    assert metrics["behaviour_weight_max"] == pytest.approx(math.e, rel=1e-12)  # before the cap, masked token aside
    assert metrics["behaviour_weight_capped_fraction"] == pytest.approx(1 / 3)
    on_policy, _ = grpo_loss(log_probs, prox, advantages, mask, clip_ratio=0.2, behaviour_log_probs=prox)
    assert on_policy.item() == pytest.approx(grpo_loss(log_probs, prox, advantages, mask, clip_ratio=0.2)[0].item(),
                                             rel=1e-12)  # weights of 1: the on-policy loss


def test_grpo_loss_requires_reference_for_kl():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="ref_log_probs"):
        grpo_loss(x, x, x, torch.ones(1, 2), kl_coef=0.1)


def test_tokens_dcr_may_not_rectify_keep_coefficient_one():
    """The ablation of DCR on some rows only: an unlikely token outside ``rectifiable`` is
    weighted as plain NLL weighs it."""
    tau, advantage = 0.1, 0.7
    _, log_probs = _token_log_probs(LOGITS)
    mask = torch.ones(1, 2, dtype=torch.float64)
    advantages = torch.full((1, 2), advantage, dtype=torch.float64)
    loss, metrics = gft_loss(log_probs, advantages, mask, tau, rectifiable=torch.tensor([[True, False]]))
    assert loss.item() == pytest.approx(-advantage * (math.log(P_CONFIDENT) + math.log(P_UNLIKELY)) / 2, rel=1e-12)
    assert metrics["rectified_fraction"] == 0.0 and metrics["mean_coefficient"] == 1.0
    everywhere, _ = gft_loss(log_probs, advantages, mask, tau, rectifiable=torch.tensor([[True, True]]))
    assert everywhere.item() == pytest.approx(gft_loss(log_probs, advantages, mask, tau)[0].item(), rel=1e-12)


def test_dcr_diagnostics_by_source_against_a_hand_computation():
    # five response tokens (one row of padding): expert, expert, teacher, self, self; tau 0.1
    probs = torch.tensor([[0.5, 0.05, 0.2, 0.01, 0.8, 1.0]], dtype=torch.float64)
    advantages = torch.tensor([[1.0, 1.0, 0.5, -0.7, -0.7, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.float64)
    sources = torch.tensor([[0, 0, 1, 2, 2, -1]])
    metrics = dcr_diagnostics(probs.log(), advantages, mask, sources, ("expert", "teacher", "self"), tau=0.1)
    assert metrics["token_share/expert"] == pytest.approx(2 / 5)
    assert metrics["token_share/self"] == pytest.approx(2 / 5)
    # rectified (p <= 0.1): the expert's second token and the first self token
    assert metrics["rectified_fraction_share/expert"] == pytest.approx(1 / 5)
    assert metrics["rectified_fraction_share/teacher"] == 0.0
    # A * c: c = 1 above tau, p below it
    assert metrics["advantage_coefficient_share/expert"] == pytest.approx((1.0 * 1 + 1.0 * 0.05) / 5)
    assert metrics["advantage_coefficient_share/self"] == pytest.approx((-0.7 * 0.01 - 0.7 * 1) / 5)

    means = per_source_means({**metrics, "loss": 0.3})
    assert means["loss"] == 0.3 and means["token_share/teacher"] == pytest.approx(1 / 5)
    assert means["rectified_fraction/expert"] == pytest.approx(1 / 2)
    assert means["rectified_fraction/self"] == pytest.approx(1 / 2)
    assert means["advantage_coefficient/teacher"] == pytest.approx(0.5)
    assert means["advantage_coefficient/self"] == pytest.approx((-0.007 - 0.7) / 2)
    assert not [key for key in means if "_share/" in key and not key.startswith("token_share/")]


def test_per_source_means_skip_a_source_without_tokens():
    means = per_source_means({"token_share/teacher": 0.0, "rectified_fraction_share/teacher": 0.0})
    assert "rectified_fraction/teacher" not in means


def test_chord_mixes_grpo_on_own_rows_with_sft_on_expert_rows_by_mu():
    """(1 - mu) x the clipped surrogate over the policy's own tokens + mu x the NLL over the
    expert's, each a token mean over its own tokens; padding counts in neither."""
    log_probs = torch.tensor([[-0.2, -1.0, -0.5, -2.0, -0.7]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-0.4, -1.0, -0.5, -2.0, -0.7]], dtype=torch.float64)
    advantages = torch.tensor([[1.0, -1.0, 9.0, 9.0, 9.0]], dtype=torch.float64)  # read on own rows only
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    expert = torch.tensor([[False, False, True, True, True]])  # the last token is padding
    mu = 0.3
    loss, metrics = chord_loss(log_probs, old, advantages, mask, expert, mu, clip_ratio=0.2)
    loss.backward()

    # own token 0: ratio e^0.2 = 1.221 > 1.2 with A = 1: the clipped term wins, no gradient;
    # own token 1: ratio 1 with A = -1: term 1, gradient d(-A r)/dlogp = 1
    rl = (-1.0 * 1.2 + 1.0) / 2
    sft = (0.5 + 2.0) / 2
    assert loss.item() == pytest.approx((1 - mu) * rl + mu * sft, rel=1e-12)
    expected_grad = [0.0, (1 - mu) * 1.0 / 2, -mu / 2, -mu / 2, 0.0]
    torch.testing.assert_close(log_probs.grad, torch.tensor([expected_grad], dtype=torch.float64))
    assert metrics["chord_mu"] == mu and metrics["rl_loss"] == pytest.approx(rl)
    assert metrics["sft_loss"] == pytest.approx(sft) and metrics["clip_fraction"] == pytest.approx(0.5)


def test_chord_phi_weighs_each_expert_token_by_p_times_one_minus_p_without_gradient_through_it():
    _, log_probs = _token_log_probs(LOGITS)  # both tokens the expert's
    mask = torch.ones(1, 2, dtype=torch.float64)
    loss, metrics = chord_loss(log_probs, log_probs.detach(), torch.zeros(1, 2, dtype=torch.float64), mask,
                               torch.ones(1, 2, dtype=torch.bool), mu=0.1, phi=True)
    phi = [p * (1 - p) for p in (P_CONFIDENT, P_UNLIKELY)]
    nll = [-math.log(P_CONFIDENT), -math.log(P_UNLIKELY)]
    assert loss.item() == pytest.approx(0.1 * (phi[0] * nll[0] + phi[1] * nll[1]) / 2, rel=1e-12)
    assert metrics["phi_mean"] == pytest.approx(sum(phi) / 2, rel=1e-12)
    assert metrics["rl_loss"] == 0.0 and "clip_fraction" not in metrics  # no own token: the GRPO term is 0
    (grad,) = torch.autograd.grad(loss, log_probs)
    torch.testing.assert_close(grad, torch.tensor([[-0.1 * phi[0] / 2, -0.1 * phi[1] / 2]], dtype=torch.float64))


def test_chord_without_expert_tokens_is_grpo_scaled_by_one_minus_mu():
    log_probs = torch.tensor([[-1.0, -0.5]], dtype=torch.float64)
    old = torch.tensor([[-1.1, -0.4]], dtype=torch.float64)
    advantages, mask = torch.tensor([[1.0, -1.0]], dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    loss, metrics = chord_loss(log_probs, old, advantages, mask, torch.zeros(1, 2, dtype=torch.bool), mu=0.25)
    assert loss.item() == pytest.approx(0.75 * grpo_loss(log_probs, old, advantages, mask)[0].item(), rel=1e-12)
    assert metrics["sft_loss"] == 0.0


@pytest.mark.parametrize("step, expected", [
    (1, 0.0), (3, 0.9 * 2 / 4), (5, 0.9),  # warm-up: 4 steps from 0
    (5 + 5, 0.05 + 0.85 * 0.5 * (1 + math.cos(math.pi * 5 / 10))),  # half-way down the cosine
    (15, 0.05), (20, 0.05),  # after 10 decay steps: the valley
])
def test_chord_mu_warms_up_linearly_then_decays_along_a_cosine_to_the_valley(step, expected):
    assert chord_mu(step, steps=20, peak=0.9, valley=0.05, warmup_steps=4, decay_steps=10) == pytest.approx(expected)


def test_chord_mu_decays_over_the_rest_of_the_stage_by_default_and_is_constant_when_peak_is_valley():
    assert chord_mu(1, steps=100, peak=0.9, valley=0.05) == pytest.approx(0.9)
    assert chord_mu(51, steps=100, peak=0.9, valley=0.05) == pytest.approx(0.475)
    assert chord_mu(100, steps=100, peak=0.9, valley=0.05) == pytest.approx(0.05 + 0.85 * 0.5 * (1 + math.cos(
        math.pi * 99 / 100)))
    assert {chord_mu(s, steps=7, peak=0.1, valley=0.1, decay_steps=0) for s in range(1, 8)} == {0.1}
