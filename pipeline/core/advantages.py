"""Group advantages (GFT's GAL and GRPO's outcome advantage are the same function: verl's).

A_i = (r_i - mean_G r) / (std_G r + 1e-6) with Bessel's std over the rows sharing a group id.
verl's conventions carry over unchanged: a group whose rewards are all equal gets A = 0, and a
group of one gets mean 0 and std 1, so A = r / (1 + 1e-6).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from verl.trainer.ppo import core_algos

EPSILON = 1e-6


def group_advantages(
    rewards: torch.Tensor | Sequence[float], group_ids: Sequence, normalize_by_std: bool = True
) -> torch.Tensor:
    """Sequence-level group-normalised advantages.

    Args:
        rewards: ``[N]`` one scalar reward per response.
        group_ids: ``[N]`` hashable group id per response (rows of one prompt share one id).
        normalize_by_std: False gives Dr.GRPO's mean-only centring.
    Returns: ``[N]`` float32 advantages.
    """
    if isinstance(rewards, torch.Tensor):
        scores = rewards.detach().to(torch.float32).clone()
    else:  # torch.tensor copies: rewards read from Arrow are read-only buffers
        scores = torch.tensor(np.asarray(rewards, dtype=np.float32))
    scores = scores.reshape(-1, 1)
    if len(group_ids) != scores.shape[0]:
        raise ValueError(f"{scores.shape[0]} rewards but {len(group_ids)} group ids")
    token_advantages, _ = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=scores,
        response_mask=torch.ones_like(scores),
        index=np.asarray(group_ids, dtype=object),
        epsilon=EPSILON,
        norm_adv_by_std_in_grpo=normalize_by_std,
    )
    return token_advantages[:, 0]
