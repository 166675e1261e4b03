"""The Learner without Ray: skipped non-finite updates, a resume point that restores it, and
the GFT update's diagnostics."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.core.batch import make_batch, with_column
from pipeline.core.data import load_prompts
from pipeline.core.losses import per_source_means
from pipeline.core.resume import Progress, latest_point
from pipeline.recipe.algorithms import objective_for
from pipeline.recipe.config import StageConfig
from workers.learner import Learner, UpdateSettings


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
    learner.start_stage(str(assets.base_model), lr=1e-2)
    before = _weights(learner)
    metrics = learner.update(batch, UpdateSettings(objective, updates_per_batch=2, micro_batch_tokens=64))
    assert metrics["skipped_updates"] == 2
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())
    assert learner.optimizer.state == {}  # no moment was touched either
    metrics = learner.update(batch, UpdateSettings(mean_log_prob, micro_batch_tokens=64))
    assert metrics["skipped_updates"] == 0
    assert any(not torch.equal(before[k], v) for k, v in learner.state_dict().items())


def test_a_resume_point_restores_weights_optimizer_and_reference(assets, batch, tmp_path):
    learner = Learner(str(assets.base_model))
    learner.start_stage(str(assets.base_model), lr=1e-2)
    learner.update(batch, UpdateSettings(mean_log_prob, micro_batch_tokens=512))
    learner.save_resume_point(str(tmp_path), Progress(stage_index=0, step=1, global_step=1, policy_version=1))
    after_one = learner.update(batch, UpdateSettings(mean_log_prob, micro_batch_tokens=512))

    resumed = Learner(str(assets.base_model))
    point = latest_point(tmp_path)
    resumed.load(str(point.folder), point.progress.policy_version)
    resumed.start_stage(str(assets.base_model), lr=1e-2)
    resumed.restore(str(point.folder))
    again = resumed.update(batch, UpdateSettings(mean_log_prob, micro_batch_tokens=512))
    assert again["loss"] == after_one["loss"] and again["kl_to_start"] == after_one["kl_to_start"]
    assert again["policy_version"] == after_one["policy_version"] == 2
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in learner.state_dict().items())


def test_bf16_compute_keeps_float32_master_weights(assets, batch):
    """``dtype: bfloat16`` computes in bf16 (autocast) but steps float32 weights: an update
    far below bf16's resolution at the weights' scale still moves them."""
    fp32 = Learner(str(assets.base_model))
    bf16 = Learner(str(assets.base_model), dtype="bfloat16")
    for learner in (fp32, bf16):
        learner.start_stage(str(assets.base_model), lr=1e-6)
    assert {p.dtype for p in bf16.model.parameters()} == {torch.float32}
    assert {p.dtype for p in bf16.reference.parameters()} == {torch.bfloat16}
    before = _weights(bf16)
    exact, rounded = (learner.update(batch, UpdateSettings(mean_log_prob, micro_batch_tokens=512)) for learner in (fp32, bf16))
    assert rounded["loss"] == pytest.approx(exact["loss"], rel=2e-2)  # bf16 has 8 bits of mantissa
    assert rounded["loss"] != exact["loss"]  # and was used
    after = bf16.state_dict()
    moved = sum(int((after[k] != v).sum()) for k, v in before.items())
    moved_in_bf16 = sum(int((after[k].bfloat16() != v.bfloat16()).sum()) for k, v in before.items())
    assert moved > 10 * moved_in_bf16  # a bf16 copy of the weights would have kept almost none of it


def test_a_gft_update_reports_where_dcr_acts_by_source(assets, tokenizer):
    """Per-source rectified fractions and mean A x c of a GFT update, over several micro-batches,
    against the same quantities computed from the policy's log-probs before it."""
    records = load_prompts(assets.train, tokenizer, 512)[:3]
    rows = [(r, source, ids) for r in records
            for source, ids in [("expert", r.expert[0]), *[("teacher", t) for t in r.teacher[:2]], ("self", r.teacher[2])]]
    batch = make_batch(group_id=[r.uid for r, _, _ in rows], source=[s for _, s, _ in rows],
                       prompt_ids=[r.prompt_ids for r, _, _ in rows], response_ids=[ids for _, _, ids in rows],
                       ground_truth=[r.ground_truth for r, _, _ in rows])
    advantages = np.random.default_rng(0).standard_normal(batch.num_rows).astype(np.float32)
    batch = with_column(batch, "advantage", advantages)
    learner = Learner(str(assets.base_model))
    learner.start_stage(str(assets.base_model), lr=1e-3)
    probs = [np.exp(lp) for lp in learner.response_log_probs(batch)]  # the weights the update starts from
    # the untrained model is nearly flat (p about 1/vocabulary): a tau that splits its tokens
    stage = StageConfig(name="gft", algorithm="gft", tau=float(np.median(np.concatenate(probs))))

    metrics = per_source_means(learner.update(batch, UpdateSettings(objective_for(stage), micro_batch_tokens=96, with_reference=False)))
    sources = batch.column("source").to_pylist()
    for source in ("expert", "teacher", "self"):
        mine = [i for i, s in enumerate(sources) if s == source]
        p = np.concatenate([probs[i] for i in mine])
        a = np.concatenate([np.full(len(probs[i]), advantages[i]) for i in mine])
        assert metrics[f"rectified_fraction/{source}"] == pytest.approx((p <= stage.tau).mean(), abs=1e-6)
        assert metrics[f"advantage_coefficient/{source}"] == pytest.approx(
            (a * np.where(p > stage.tau, 1.0, p)).mean(), abs=1e-5)
    assert 0.3 < metrics["rectified_fraction/self"] < 0.7
    total = sum(len(p) for p in probs)
    assert metrics["token_share/self"] == pytest.approx(sum(len(probs[i]) for i, s in enumerate(sources)
                                                            if s == "self") / total, abs=1e-6)
    assert "entropy" in metrics  # the batch's policy entropy

    # the ablation of DCR on off-policy rows only: self tokens keep c = 1, so A x c is A there
    offpolicy = replace(stage, dcr_sources=["expert", "teacher"])
    learner = Learner(str(assets.base_model))
    learner.start_stage(str(assets.base_model), lr=1e-3)
    metrics = per_source_means(learner.update(batch, UpdateSettings(objective_for(offpolicy), micro_batch_tokens=96, with_reference=False)))
    mine = [i for i, s in enumerate(sources) if s == "self"]
    assert metrics["rectified_fraction/self"] == 0.0
    assert metrics["advantage_coefficient/self"] == pytest.approx(
        np.concatenate([np.full(len(probs[i]), advantages[i]) for i in mine]).mean(), abs=1e-5)
    assert metrics["rectified_fraction/expert"] > 0


def test_gradient_checkpointing_recomputes_each_layer_and_leaves_the_gradients(assets, batch):
    """Each decoder layer runs twice per update with it (forward, then again in the backward,
    from its kept input), once without; the gradients agree to float tolerance."""
    grads, runs, metrics = {}, {}, {}
    for on in (False, True):
        learner = Learner(str(assets.base_model), gradient_checkpointing=on)
        learner.start_stage(str(assets.base_model), lr=1e-3)
        calls, layer = [], learner.model.model.layers[0]
        forward = layer.forward  # counted here: the backward's recompute runs no forward hooks
        layer.forward = lambda *args, forward=forward, calls=calls, **kwargs: calls.append(1) or forward(*args, **kwargs)
        step, model = learner.optimizer.step, learner.model  # the gradients, as the step sees them (the update frees them)
        learner.optimizer.step = lambda step=step, on=on, model=model: grads.setdefault(on, {
            name: p.grad.clone() for name, p in model.named_parameters()}) and step()
        metrics[on] = learner.update(batch, UpdateSettings(mean_log_prob, micro_batch_tokens=512))
        runs[on] = len(calls)
        assert all(p.grad is None for p in learner.model.parameters())
    assert (runs[False], runs[True]) == (1, 2)
    assert metrics[True]["loss"] == metrics[False]["loss"]
    assert metrics[True]["grad_norm"] == pytest.approx(metrics[False]["grad_norm"], rel=1e-5)
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_a_stage_without_a_reference_holds_none_and_cannot_ask_for_the_kl(assets, batch):
    learner = Learner(str(assets.base_model))
    learner.start_stage(str(assets.base_model), lr=1e-3)
    assert learner.reference is not None
    learner.start_stage(None, lr=1e-3)  # the next stage needs none: the last one's is dropped
    assert learner.reference is None
    metrics = learner.update(batch, UpdateSettings(mean_log_prob, micro_batch_tokens=512, with_reference=False))
    assert "kl_to_start" not in metrics and metrics["skipped_updates"] == 0
    with pytest.raises(RuntimeError, match="start_stage was given none"):
        learner.update(batch, UpdateSettings(mean_log_prob, micro_batch_tokens=512, with_reference=True))


def test_a_grpo_update_on_stale_rows_weighs_tokens_by_the_behaviour_ratio(assets, tokenizer):
    """Self rows whose behaviour log-probs are the policy's of one update ago (as a rollout run
    ahead of that update samples them): the update reports the capped pi_prox / pi_behaviour
    weights that the learner's log-probs before it give, token mean and max, over several
    micro-batches."""
    records = load_prompts(assets.train, tokenizer, 512)[:3]
    rows = [(r, ids) for r in records for ids in r.teacher[:3]]
    batch = make_batch(group_id=[r.uid for r, _ in rows], source=["self"] * len(rows),
                       prompt_ids=[r.prompt_ids for r, _ in rows], response_ids=[ids for _, ids in rows],
                       ground_truth=[r.ground_truth for r, _ in rows])
    batch = with_column(batch, "advantage", np.random.default_rng(0).standard_normal(batch.num_rows).astype(np.float32))
    learner = Learner(str(assets.base_model))
    learner.start_stage(str(assets.base_model), lr=1e-2)
    stage = StageConfig(name="grpo", algorithm="grpo", behaviour_weight_cap=1.05)
    settings = UpdateSettings(objective_for(stage), micro_batch_tokens=96, with_reference=False, with_behaviour=True)
    behaviour = learner.response_log_probs(batch)  # the policy that "sampled" the rows
    stale = with_column(batch, "behaviour_logprobs", behaviour)
    fresh = learner.update(stale, settings)  # on-policy yet: every weight 1, to float precision
    assert fresh["behaviour_weight_mean"] == pytest.approx(1.0, abs=1e-5)

    proximal = learner.response_log_probs(batch)  # one update later
    ratios = np.exp(np.concatenate(proximal) - np.concatenate(behaviour))
    metrics = learner.update(stale, settings)
    assert metrics["behaviour_weight_mean"] == pytest.approx(np.minimum(ratios, 1.05).mean(), rel=1e-4)
    assert metrics["behaviour_weight_max"] == pytest.approx(ratios.max(), rel=1e-4)
    assert metrics["behaviour_weight_capped_fraction"] == pytest.approx((ratios > 1.05).mean(), abs=1e-6)
    assert 0 < (ratios > 1.05).mean() < 1  # the update moved the policy: some weights capped, some not
