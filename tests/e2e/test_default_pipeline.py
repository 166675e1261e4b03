"""End to end through the ``gft`` command on real Ray actors: the default's stages (SFT warm-up,
GFT, GRPO) at a few steps each, read from the session's fault-free run (``bench.chaos.RECIPE``).
Whether GFT raises accuracy over the warm-up is a claim about the full default recipe over
seeds, measured by ``python -m bench.seeds`` (the README's table), not by one run here."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from transformers import AutoModelForCausalLM

from bench.chaos import STEPS

pytestmark = pytest.mark.slow


def _batches(run_dir, stage):
    return [pa.ipc.open_file(f).read_all() for f in sorted((run_dir / "batches").glob(f"{stage}-*.arrow"))]


def test_every_stage_writes_a_checkpoint_that_transformers_loads_and_every_policy_is_evaluated(fault_free_run):
    evals = json.loads((fault_free_run / "eval.json").read_text())["evals"]
    assert list(evals) == ["base", "warmup", "gft", "grpo"]
    assert all(metrics["test"]["prompts"] == 16 for metrics in evals.values())
    for stage, _ in STEPS:
        model = AutoModelForCausalLM.from_pretrained(fault_free_run / "checkpoints" / stage)
        assert isinstance(model(torch.tensor([[1, 2, 3]])).logits, torch.Tensor)


def test_gft_batches_hold_every_source_with_group_normalised_advantages(fault_free_run):
    """The step's own checks (tests/pipeline/driver/test_stages.py) here on what a run fed the learner."""
    batches = _batches(fault_free_run, "gft")
    assert len(batches) == dict(STEPS)["gft"]
    for table in batches:
        groups = {}
        for row in table.select(["group_id", "source", "reward", "advantage"]).to_pylist():
            groups.setdefault(row["group_id"], []).append(row)
        for members in groups.values():
            sources = [m["source"] for m in members]
            assert (sources.count("expert"), sources.count("teacher"), sources.count("self")) == (1, 3, 4)
            rewards, advantages = (np.array([m[k] for m in members]) for k in ("reward", "advantage"))
            expected = (rewards - rewards.mean()) / (rewards.std(ddof=1) + 1e-6) if rewards.std() else 0 * rewards
            np.testing.assert_allclose(advantages, expected, atol=1e-5)


def test_self_rows_carry_the_version_of_the_weights_that_sampled_them(fault_free_run):
    versions = []
    for stage in ("gft", "grpo"):
        for table in _batches(fault_free_run, stage):
            sources = np.array(table.column("source").to_pylist())
            stamps = np.array(table.column("policy_version").to_pylist(), dtype=object)
            (stamped,) = set(stamps[sources == "self"])
            versions.append(stamped)
            assert all(v is None for v in stamps[sources != "self"])
    # each step after the warm-up samples with the weights of the update before it
    warmup, gft, grpo = (steps for _, steps in STEPS)
    assert versions == list(range(warmup, warmup + gft + grpo))


@pytest.mark.parametrize("staleness, twin", [(1, "fault_free_run_ahead"), (2, "fault_free_run_two_ahead")])
def test_rows_sampled_ahead_are_at_most_max_staleness_updates_old_and_grpo_weighs_them(staleness, twin, request):
    """``rollout.max_staleness=k``: each stage's first step samples on its start policy and starts
    the rollouts of the next k steps on it; every later step starts the rollout k steps on, on the
    weights from before its update. So step j of a stage samples on the version after update
    max(0, j - k - 1) of it and is min(j - 1, k) updates stale. GRPO's loss reads the behaviour
    log-probs, GFT's does not."""
    run_dir = request.getfixturevalue(twin)
    warmup, gft, grpo = (steps for _, steps in STEPS)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for stage, steps, start in (("gft", gft, warmup), ("grpo", grpo, warmup + gft)):
        versions = []
        for table in _batches(run_dir, stage):
            sources = np.array(table.column("source").to_pylist())
            (stamped,) = set(np.array(table.column("policy_version").to_pylist(), dtype=object)[sources == "self"])
            versions.append(stamped)
        assert versions == [start + max(0, j - staleness - 1) for j in range(1, steps + 1)]
        logged = [row for row in rows if row["stage"] == stage]
        assert [row["staleness"] for row in logged] == [float(min(j - 1, staleness)) for j in range(1, steps + 1)]
        # the decoupled loss (its weights tested in tests/workers/test_learner.py) for GRPO alone
        assert all(("behaviour_weight_mean" in row) == (stage == "grpo") for row in logged)
