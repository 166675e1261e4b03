"""The Learner without Ray: skipped non-finite updates, and a resume point that restores it."""

import math

import numpy as np
import pytest
import torch

from pipeline.batch import make_batch, with_column
from pipeline.data import load_prompts
from pipeline.resume import Progress, latest_point
from workers.learner import Learner


@pytest.fixture
def batch(assets, tokenizer):
    records = load_prompts(assets.train, tokenizer, 512)[:4]
    rows = make_batch(group_id=[r.uid for r in records], source=["expert"] * 4,
                      prompt_ids=[r.prompt_ids for r in records], response_ids=[r.expert[0] for r in records],
                      ground_truth=[r.ground_truth for r in records])
    return with_column(rows, "advantage", np.ones(4, dtype=np.float32))


def mean_log_prob(log_probs, tokens):
    return -(log_probs * tokens.response_mask).sum() / tokens.response_mask.sum(), {}


def nan_loss(log_probs, tokens):
    return mean_log_prob(log_probs, tokens)[0] * math.nan, {}


def infinite_gradient(log_probs, tokens):  # d/dx sqrt(x) at 0: a finite loss, a NaN gradient
    return torch.sqrt((log_probs * 0).sum()), {}


def _weights(learner):
    return {k: v.clone() for k, v in learner.state_dict().items()}


@pytest.mark.parametrize("objective", [nan_loss, infinite_gradient])
def test_a_non_finite_update_is_skipped_and_leaves_the_weights(assets, batch, objective):
    learner = Learner(str(assets.base_model))
    learner.start_stage(lr=1e-2)
    before = _weights(learner)
    metrics = learner.update(batch, objective, updates_per_batch=2, micro_batch_tokens=64)
    assert metrics["skipped_updates"] == 2
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())
    assert learner.optimizer.state == {}  # no moment was touched either
    metrics = learner.update(batch, mean_log_prob, updates_per_batch=1, micro_batch_tokens=64)
    assert metrics["skipped_updates"] == 0
    assert any(not torch.equal(before[k], v) for k, v in learner.state_dict().items())


def test_a_resume_point_restores_weights_optimizer_and_reference(assets, batch, tmp_path):
    learner = Learner(str(assets.base_model))
    learner.start_stage(lr=1e-2)
    learner.update(batch, mean_log_prob, 1, 512)
    learner.save_resume_point(str(tmp_path), Progress(stage_index=0, step=1, global_step=1, policy_version=1))
    after_one = learner.update(batch, mean_log_prob, 1, 512)

    resumed = Learner(str(assets.base_model))
    point = latest_point(tmp_path)
    resumed.load(str(point.folder), point.progress.policy_version)
    resumed.start_stage(lr=1e-2, reference_path=str(assets.base_model))
    resumed.restore(str(point.folder))
    again = resumed.update(batch, mean_log_prob, 1, 512)
    assert again["loss"] == after_one["loss"] and again["kl_to_start"] == after_one["kl_to_start"]
    assert again["policy_version"] == after_one["policy_version"] == 2
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in learner.state_dict().items())
