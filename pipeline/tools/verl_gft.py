"""The GFT loss in verl's policy-loss registry: importing this module registers it as ``"gft"``,
so a verl run selects it with ``actor_rollout_ref.actor.policy_loss.loss_mode=gft``."""

from __future__ import annotations

import os

import torch
from verl.trainer.ppo import core_algos

from pipeline.core.losses import DEFAULT_TAU, dcr_coefficients

GFT_TAU_ENV = "GFT_TAU"


def _tau_from_env() -> float:
    raw = os.environ.get(GFT_TAU_ENV, str(DEFAULT_TAU))
    try:
        tau = float(raw)
    except ValueError as err:
        raise ValueError(f"{GFT_TAU_ENV}={raw!r} is not a number") from err
    if tau <= 0:
        raise ValueError(f"{GFT_TAU_ENV} must be > 0, got {tau}")
    return tau


@core_algos.register_policy_loss("gft")
def verl_gft_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config=None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GFT loss in verl's policy-loss signature (``actor.policy_loss.loss_mode=gft``).

    verl's ``ActorConfig`` is a closed dataclass with no field for tau, so tau comes from the
    ``GFT_TAU`` environment variable (default 0.1), which a verl run sets for its workers with
    ``+ray_kwargs.ray_init.runtime_env.env_vars.GFT_TAU=0.1``. ``old_log_prob`` is unused: DCR
    weighs by the current policy's probabilities. The aggregation follows ``loss_agg_mode`` and
    verl's global batch info, like verl's own losses.
    """
    coefficients = dcr_coefficients(log_prob, _tau_from_env())
    loss_mat = -advantages * coefficients * log_prob
    if rollout_is_weights is not None:
        loss_mat = loss_mat * rollout_is_weights
    batch_info = config.global_batch_info if config is not None else {}
    loss = core_algos.agg_loss(loss_mat, response_mask, loss_agg_mode, **batch_info)
    mean_coefficient = (coefficients * response_mask).sum() / response_mask.sum().clamp(min=1)
    return loss, {"actor/gft_mean_coefficient": mean_coefficient.item()}
