"""Policy losses: GFT with Dynamic Coefficient Rectification, its SFT/DFT special cases, GRPO and CHORD.

Every loss is a pure function of per-token log-probs, advantages and a response mask and returns
``(scalar_loss, metrics)``. Shapes: ``log_probs``, ``advantages``, ``response_mask`` are all
``[batch, response_len]`` (or any one shape they share; a packed ``[1, total_tokens]`` works too).
Aggregation is the token mean over every response token of the micro-batch (docs/design.md §2).

GRPO does not re-implement anything: its clipped surrogate and KL come from
``verl.trainer.ppo.core_algos`` so the numbers are verl's. verl is imported by the GRPO loss alone
(it brings Ray and much more), so a learner of the other losses needs torch only, as on a GPU
machine that has nothing else (``scripts/gpu_check.sh``). The GFT loss in verl's own policy-loss
registry is ``pipeline.tools.verl_gft``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

Metrics = dict[str, float]

DEFAULT_TAU = 0.1


def _token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # clamp keeps an all-masked micro-batch at loss 0 instead of NaN
    return (values * mask).sum() / mask.sum().clamp(min=1)


def _rectified(log_probs: torch.Tensor, tau: float, rectifiable: torch.Tensor | None) -> torch.Tensor:
    rectified = log_probs.detach().exp() <= tau
    return rectified if rectifiable is None else rectified & rectifiable


def dcr_coefficients(log_probs: torch.Tensor, tau: float, rectifiable: torch.Tensor | None = None) -> torch.Tensor:
    """Dynamic Coefficient Rectification: c_t = 1 if p_t > tau else sg(p_t). Tokens where
    ``rectifiable`` is False keep c = 1 (an ablation; the paper rectifies every token).

    Args: log_probs ``[B, T]``; rectifiable ``[B, T]`` bool, or None for every token. Returns
    ``[B, T]``, detached (c never carries gradient).
    """
    probs = log_probs.detach().exp()
    return torch.where(_rectified(log_probs, tau, rectifiable), probs, torch.ones_like(probs))


def gft_loss(
    log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    tau: float = DEFAULT_TAU,
    rectifiable: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Metrics]:
    """GFT loss: token_mean( -A * c_t * log p_t ) with c_t from :func:`dcr_coefficients`.

    Args:
        log_probs: ``[B, T]`` log pi_theta(y_t | prefix) of the response tokens (with grad).
        advantages: ``[B, T]`` sequence advantage broadcast to every token (no grad).
        response_mask: ``[B, T]`` 1 for response tokens, 0 for padding.
        tau: rectification threshold. ``tau <= 0`` never rectifies (c = 1, SFT-like weights);
            ``tau >= 1`` always rectifies (c = sg(p), DFT-like weights).
        rectifiable: ``[B, T]`` bool, the tokens DCR may rectify (None: all, as the paper).

    The gradient on p_t is A/p_t (at most A/tau) for confident tokens and A for rectified ones,
    so the inverse-probability weight of plain NLL is bounded by max(1, 1/tau).
    """
    mask = response_mask.to(log_probs.dtype)
    coefficients = dcr_coefficients(log_probs, tau, rectifiable)
    loss = _token_mean(-advantages * coefficients * log_probs, mask)
    rectified = _rectified(log_probs, tau, rectifiable).to(mask.dtype)
    metrics = {
        "rectified_fraction": _token_mean(rectified, mask).item(),
        "mean_coefficient": _token_mean(coefficients, mask).item(),
    }
    return loss, metrics


def dcr_diagnostics(
    log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    sources: torch.Tensor,
    source_names: Sequence[str],
    tau: float = DEFAULT_TAU,
    rectifiable: torch.Tensor | None = None,
) -> Metrics:
    """Where DCR acts, by source: for each source s, the share of the response tokens that are
    s's (``token_share/s``), and the means over all response tokens of 1[s] x 1[p <= tau]
    (``rectified_fraction_share/s``) and of 1[s] x A x c (``advantage_coefficient_share/s``).
    Token-weighted means of shares over micro-batches stay exact, which means within a source
    would not; :func:`per_source_means` turns them into those means at the end.

    Args: log_probs, advantages, response_mask, sources ``[B, T]`` (``sources``: an index into
    ``source_names``, -1 off the responses); rectifiable as for :func:`gft_loss`.
    """
    mask = response_mask.to(log_probs.dtype)
    rectified = _rectified(log_probs, tau, rectifiable).to(mask.dtype)
    weight = advantages * dcr_coefficients(log_probs, tau, rectifiable)
    names, values = [], []
    for index, name in enumerate(source_names):
        member = (sources == index).to(mask.dtype) * mask
        for quantity, value in (("token", member), ("rectified_fraction", member * rectified),
                                ("advantage_coefficient", member * weight)):
            names.append(f"{quantity}_share/{name}")
            values.append(_token_mean(value, mask))
    return dict(zip(names, torch.stack(values).tolist()))  # one device sync, not one a value


def per_source_means(metrics: dict[str, float]) -> dict[str, float]:
    """``X_share/s`` (a token mean of 1[s] x X, as :func:`dcr_diagnostics` gives it) becomes
    ``X/s``, the mean of X over source s's tokens; a source without tokens gets none."""
    out = {key: value for key, value in metrics.items() if "_share/" not in key or key.startswith("token_share/")}
    for key, value in metrics.items():
        name, _, source = key.partition("_share/")
        if source and name != "token":
            tokens = metrics.get(f"token_share/{source}", 0.0)
            if tokens > 0:
                out[f"{name}/{source}"] = value / tokens
    return out


def sft_loss(log_probs: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
    """SFT = GFT on the expert only with A = 1 and c = 1: plain token-mean NLL. Shapes ``[B, T]``."""
    return gft_loss(log_probs, torch.ones_like(log_probs), response_mask, tau=0.0)


def dft_loss(log_probs: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
    """DFT = GFT on the expert only with A = 1 and c = sg(p) always: token_mean(-sg(p) log p)."""
    return gft_loss(log_probs, torch.ones_like(log_probs), response_mask, tau=1.0)


@functools.lru_cache(maxsize=8)
def _verl_actor_config(clip_ratio: float):
    # verl's vanilla loss reads its clip range from an ActorConfig; the batch-size fields are
    # required by its validation but unused by the loss itself.
    from verl.workers.config import ActorConfig

    return ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_mini_batch_size=1,
        ppo_micro_batch_size_per_gpu=1,
        clip_ratio=clip_ratio,
        loss_agg_mode="token-mean",
    )


def grpo_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio: float = 0.2,
    kl_coef: float = 0.0,
    ref_log_probs: torch.Tensor | None = None,
    behaviour_log_probs: torch.Tensor | None = None,
    behaviour_weight_cap: float = 2.0,
) -> tuple[torch.Tensor, Metrics]:
    """GRPO: verl's vanilla PPO clipped surrogate plus optional low-variance KL to a reference.

    With ``behaviour_log_probs`` (rows sampled by an older policy than ``old_log_probs``', as
    when the rollout runs ahead of the update), the decoupled objective of AReaL: the ratio is
    taken against the proximal policy (``old_log_probs``, the learner's before this update) and
    clipped as usual, and each token's clipped term is weighted by ``pi_prox / pi_behaviour``,
    capped at ``behaviour_weight_cap`` (truncated importance sampling, verl's
    ``rollout_is_weights``). The weight is a constant: no gradient flows through it.

    Args:
        log_probs: ``[B, T]`` current policy log-probs (with grad).
        old_log_probs: ``[B, T]`` log-probs of the policy before this update (the one that
            sampled the tokens, when the rows are on-policy).
        advantages: ``[B, T]`` GRPO advantages broadcast over tokens.
        response_mask: ``[B, T]``.
        clip_ratio: PPO epsilon.
        kl_coef: weight of the k3 ("low_var_kl") penalty to ``ref_log_probs``; 0 disables it.
        behaviour_log_probs: ``[B, T]`` log-probs of the policy that sampled the tokens, or None.
        behaviour_weight_cap: the largest weight a token gets (> 0).
    """
    from verl.trainer.ppo import core_algos

    mask = response_mask.to(log_probs.dtype)
    metrics: Metrics = {}
    weights = None
    if behaviour_log_probs is not None:
        raw = torch.exp((old_log_probs - behaviour_log_probs).detach().clamp(max=20.0))
        weights = raw.clamp(max=behaviour_weight_cap)
        selected = mask > 0
        metrics["behaviour_weight_mean"] = _token_mean(weights, mask).item()
        metrics["behaviour_weight_max"] = raw[selected].max().item() if selected.any() else 0.0
        metrics["behaviour_weight_capped_fraction"] = _token_mean((raw > behaviour_weight_cap).to(mask.dtype), mask).item()
    loss, verl_metrics = core_algos.compute_policy_loss_vanilla(
        old_log_prob=old_log_probs,
        log_prob=log_probs,
        advantages=advantages,
        response_mask=mask,
        loss_agg_mode="token-mean",
        config=_verl_actor_config(float(clip_ratio)),
        rollout_is_weights=weights,
    )
    metrics["clip_fraction"] = verl_metrics["actor/pg_clipfrac"]
    metrics["ppo_kl"] = verl_metrics["actor/ppo_kl"]
    if kl_coef > 0:
        if ref_log_probs is None:
            raise ValueError("grpo_loss: kl_coef > 0 needs ref_log_probs")
        kl = core_algos.kl_penalty(log_probs, ref_log_probs, kl_penalty="low_var_kl")
        kl_loss = core_algos.agg_loss(kl, mask, loss_agg_mode="token-mean")
        loss = loss + kl_coef * kl_loss
        metrics["kl_loss"] = kl_loss.item()
    return loss, metrics


def chord_mu(step: int, steps: int, peak: float, valley: float, warmup_steps: int = 0,
             decay_steps: int | None = None) -> float:
    """CHORD's weight of the SFT term at ``step`` (1-based) of a stage of ``steps``: a linear ramp
    from 0 to ``peak`` over ``warmup_steps``, then a cosine from ``peak`` down to ``valley`` over
    ``decay_steps`` (None: the rest of the stage), then ``valley``. ``peak == valley`` with no
    warm-up is a constant (CHORD-phi's setting)."""
    done = step - 1  # steps before this one
    if done < warmup_steps:
        return peak * done / warmup_steps
    decay = steps - warmup_steps if decay_steps is None else decay_steps
    if decay <= 0 or done - warmup_steps >= decay:
        return valley
    cosine = 0.5 * (1.0 + math.cos(math.pi * (done - warmup_steps) / decay))
    return valley + (peak - valley) * cosine


def chord_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    expert_mask: torch.Tensor,
    mu: float,
    phi: bool = False,
    clip_ratio: float = 0.2,
    kl_coef: float = 0.0,
    ref_log_probs: torch.Tensor | None = None,
    behaviour_log_probs: torch.Tensor | None = None,
    behaviour_weight_cap: float = 2.0,
) -> tuple[torch.Tensor, Metrics]:
    """CHORD (arXiv 2508.11408): ``(1 - mu) * GRPO + mu * SFT`` in one stage, GRPO on the policy's
    own rows and SFT on the expert's. Each term is a token mean over its own rows' tokens (as the
    authors' Trinity-RFT implementation takes them); a term without tokens here is 0.

    Args:
        log_probs, old_log_probs, advantages, response_mask: as for :func:`grpo_loss`, ``[B, T]``;
            ``advantages`` are read on the policy's own rows only.
        expert_mask: ``[B, T]`` bool, True on the expert rows' tokens (the SFT term's).
        mu: the SFT term's weight in [0, 1] (:func:`chord_mu`).
        phi: CHORD-phi: each expert token's NLL weighted by ``sg(p (1 - p))``, which is largest
            where the policy is unsure (p = 1/2) and vanishes where it already agrees (p -> 1) or
            is far from the expert (p -> 0).
        clip_ratio, kl_coef, ref_log_probs, behaviour_log_probs, behaviour_weight_cap: the GRPO
            term's, as for :func:`grpo_loss`.
    """
    mask = response_mask.to(log_probs.dtype)
    expert = expert_mask.to(mask.dtype) * mask
    own = mask - expert
    metrics: Metrics = {"chord_mu": float(mu)}
    if own.sum() > 0:
        rl, rl_metrics = grpo_loss(log_probs, old_log_probs, advantages, own, clip_ratio, kl_coef, ref_log_probs,
                                   behaviour_log_probs, behaviour_weight_cap)
        metrics.update(rl_metrics)
    else:  # verl's token mean over no token is NaN
        rl = (log_probs * 0.0).sum()
    weights = torch.ones_like(log_probs)
    if phi:
        probs = log_probs.detach().exp()
        weights = probs * (1.0 - probs)
        metrics["phi_mean"] = _token_mean(weights, expert).item()
    sft = _token_mean(-weights * log_probs, expert)
    metrics["rl_loss"], metrics["sft_loss"] = rl.item(), sft.item()
    return (1.0 - mu) * rl + mu * sft, metrics
