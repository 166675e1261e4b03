"""Group advantages: the hand formula of docs/design.md §2, and verl's GRPO advantage on the same input."""

import math
import statistics

import numpy as np
import pytest
import torch
from verl.trainer.ppo import core_algos

from pipeline.core.advantages import group_advantages

REWARDS = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
GROUPS = ["a", "a", "a", "a", "b", "b", "b", "c", "c", "c", "d"]


def _by_hand(rewards, groups):
    out = []
    for r, g in zip(rewards, groups):
        members = [x for x, h in zip(rewards, groups) if h == g]
        if len(members) == 1:
            out.append(r / (1 + 1e-6))
        else:
            out.append((r - statistics.mean(members)) / (statistics.stdev(members) + 1e-6))
    return out


def test_group_advantage_matches_hand_formula_with_bessel_std():
    advantages = group_advantages(REWARDS, GROUPS)
    assert advantages.tolist() == pytest.approx(_by_hand(REWARDS, GROUPS), rel=1e-5)
    # group "a": mean 0.5, Bessel std sqrt(1/3)
    assert advantages[0].item() == pytest.approx(0.5 / (math.sqrt(1 / 3) + 1e-6), rel=1e-6)


def test_all_equal_groups_get_zero_advantage_and_a_group_of_one_keeps_its_reward():
    advantages = group_advantages(REWARDS, GROUPS)
    assert advantages[4:7].tolist() == [0.0, 0.0, 0.0]  # b: all right
    assert advantages[7:10].tolist() == [0.0, 0.0, 0.0]  # c: all wrong
    assert advantages[10].item() == pytest.approx(1 / (1 + 1e-6))  # d: alone


def test_equals_verls_grpo_outcome_advantage_on_token_level_rewards():
    rng = np.random.default_rng(0)
    rewards = rng.integers(0, 2, size=40).astype(np.float32)
    groups = rng.integers(0, 9, size=40)
    lengths = rng.integers(1, 7, size=40)
    mask = torch.tensor(np.arange(7)[None, :] < lengths[:, None], dtype=torch.float32)
    token_rewards = torch.zeros(40, 7)
    token_rewards[torch.arange(40), torch.tensor(lengths - 1)] = torch.tensor(rewards)
    verl_advantages, _ = core_algos.compute_grpo_outcome_advantage(token_rewards, mask, groups)
    ours = group_advantages(torch.tensor(rewards), groups.tolist())
    torch.testing.assert_close(ours[:, None] * mask, verl_advantages)


def test_mean_only_centring_and_length_mismatch():
    advantages = group_advantages([1.0, 0.0, 0.0, 0.0], [0, 0, 0, 0], normalize_by_std=False)
    assert advantages.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])
    with pytest.raises(ValueError, match="3 rewards but 2 group ids"):
        group_advantages([1.0, 0.0, 1.0], [0, 0])
