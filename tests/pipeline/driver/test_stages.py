"""What a step does with a scored batch: its advantages, by algorithm and grouping."""

import numpy as np
import pytest

from pipeline.core.batch import make_batch, with_column
from pipeline.driver.stages import step_advantages
from pipeline.recipe.config import StageConfig

# one prompt's group: 1 expert, 3 teacher and 4 self rows, rewards as a weak policy's
SOURCES = ["expert"] + ["teacher"] * 3 + ["self"] * 4
REWARDS = np.array([1, 1, 1, 0, 0, 0, 0, 1], dtype=np.float32)


@pytest.fixture
def batch():
    rows = make_batch(group_id=["p"] * 8, source=SOURCES, prompt_ids=[[1]] * 8, response_ids=[[2]] * 8,
                      ground_truth=["3"] * 8)
    return with_column(rows, "reward", REWARDS)


def _normalised(rewards: np.ndarray) -> np.ndarray:
    if len(rewards) == 1:  # verl's convention for a group of one: mean 0, std 1
        return rewards / (1 + 1e-6)
    return (rewards - rewards.mean()) / (rewards.std(ddof=1) + 1e-6)


def test_gft_normalises_a_prompts_rows_together_as_the_paper_does(batch):
    advantages = step_advantages(batch, StageConfig(name="gft", algorithm="gft"))
    np.testing.assert_allclose(advantages, _normalised(REWARDS), rtol=1e-5)
    assert advantages[5:7].max() < -0.7  # the weak policy's wrong samples, beside right off-policy rows


def test_the_per_source_ablation_normalises_each_source_apart(batch):
    advantages = step_advantages(batch, StageConfig(name="gft", algorithm="gft", advantage_groups="prompt_and_source"))
    sources = np.array(SOURCES)
    for source in ("expert", "teacher", "self"):
        chosen = sources == source
        np.testing.assert_allclose(advantages[chosen], _normalised(REWARDS[chosen]), rtol=1e-5)
    assert advantages[sources == "self"].mean() == pytest.approx(0.0, abs=1e-6)  # no constant push on self rows


def test_sft_weighs_every_row_one(batch):
    assert step_advantages(batch, StageConfig(name="sft", algorithm="sft")).tolist() == [1.0] * 8


def test_chord_compares_a_prompts_own_samples_with_each_other_whatever_the_stage_says(batch):
    """CHORD's GRPO term: the policy's own samples normalised among themselves, the expert's
    reward left out of their baseline, with or without ``advantage_groups`` asking otherwise."""
    for groups in ("prompt", "prompt_and_source"):
        advantages = step_advantages(batch, StageConfig(name="c", algorithm="chord", advantage_groups=groups))
        own = np.array(SOURCES) == "self"
        np.testing.assert_allclose(advantages[own], _normalised(REWARDS[own]), rtol=1e-5)
