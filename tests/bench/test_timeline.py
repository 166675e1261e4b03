"""``bench/timeline.py``: the step-time model of sampling ahead, against a hand computation."""

import argparse
from pathlib import Path

import pytest

from bench.timeline import H200_BF16_DENSE_FLOPS, at_scale, predict
from pipeline.core.shapes import SHAPES

ROOT = Path(__file__).resolve().parents[2]


def test_sampling_ahead_hides_the_shorter_of_the_rollout_and_the_learners_side_but_not_the_sync():
    phases = {"rollout": 3.0, "weight_sync": 0.5, "score": 0.25, "advantage": 0.25, "update": 1.5}
    assert predict(phases) == (5.5, 3.5)  # 0.5 + 3 + 2, and 0.5 + max(3, 2)
    assert predict({**phases, "rollout": 1.0}) == (3.5, 2.5)  # the learner's side is the longer: 0.5 + 2


def test_at_scale_counts_the_recipes_tokens_at_the_rates_given():
    args = argparse.Namespace(recipe=ROOT / "recipes" / "qwen2.5-math-1.5b" / "gft_then_grpo.yaml", stage="grpo",
                              shape="qwen2.5-math-1.5b", gpus=4, decode_tokens_per_s=1000.0, mfu=0.5,
                              sync_gb_per_s=10.0, reward_ms=0.0, prompt_tokens=100, response_tokens=400)
    colocated, split = at_scale(args)
    params = SHAPES["qwen2.5-math-1.5b"].parameters()
    rows = 128 * 8  # the recipe's GRPO stage: 128 prompts, 8 self rows each
    assert colocated[3] == pytest.approx(rows * 400 / (1000 * 4))
    # 6 FLOPs a parameter a token, a forward more for gradient checkpointing (on in the recipe), and
    # the KL reference's forward every 10 steps (kl_every; kl_coef is 0)
    assert colocated[4] == pytest.approx(rows * 500 * 2 * params * 4.1 / (4 * H200_BF16_DENSE_FLOPS * 0.5))
    assert colocated[5] == pytest.approx(2 * params / 10e9)
    assert colocated[7] == colocated[8] == pytest.approx(colocated[3] + colocated[4] + colocated[5])
    assert split[1:3] == [2, 2] and split[3] == pytest.approx(2 * colocated[3])
    assert split[8] == pytest.approx(split[5] + max(split[3], split[4]))
