"""The algorithms' specs: what each one allows and reads, and that config validation and the
objectives follow them."""

import math
import pickle
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from pipeline.core.batch import SOURCES
from pipeline.core.errors import ConfigError
from pipeline.recipe.algorithms import ALGORITHMS, needs_reference, objective_for
from pipeline.recipe.config import StageConfig, load_recipe


def test_the_specs_say_what_the_paper_grpo_and_chord_need():
    assert set(ALGORITHMS) == {"sft", "dft", "gft", "grpo", "chord"}
    assert ALGORITHMS["gft"].sources == SOURCES and ALGORITHMS["grpo"].sources == ("self",)
    assert ALGORITHMS["chord"].sources == ("expert", "self")
    assert [a.name for a in ALGORITHMS.values() if a.group_advantages] == ["gft", "grpo", "chord"]
    assert [a.name for a in ALGORITHMS.values() if a.old_log_probs] == ["grpo", "chord"]
    assert [a.name for a in ALGORITHMS.values() if a.advantage_groups] == ["chord"]
    grpo = ALGORITHMS["grpo"]
    assert not grpo.needs_reference(StageConfig(name="s", algorithm="grpo", kl_coef=0.0))
    assert grpo.needs_reference(StageConfig(name="s", algorithm="grpo", kl_coef=0.1))
    assert not ALGORITHMS["gft"].needs_reference(StageConfig(name="s", algorithm="gft", kl_coef=0.1))


@pytest.mark.parametrize("algorithm", ["sft", "dft", "gft", "grpo", "chord"])
@pytest.mark.parametrize("source", SOURCES)
def test_validation_refuses_exactly_the_sources_an_algorithm_does_not_train_on(algorithm, source):
    group = {"expert": 0, "teacher": 0, "self": 0, source: 2}
    overrides = [f"stages.gft.algorithm={algorithm}", *(f"stages.gft.group.{k}={v}" for k, v in group.items())]
    if algorithm == "chord":  # it needs both of its sources: the refusal names the one that is not its own
        group = {"expert": 1, "teacher": 0, "self": 2, source: 2}
        overrides = [f"stages.gft.algorithm={algorithm}", *(f"stages.gft.group.{k}={v}" for k, v in group.items())]
    if source in ALGORITHMS[algorithm].sources:
        assert load_recipe(overrides=overrides).stage("gft").group.__dict__ == group
    else:
        with pytest.raises(ConfigError, match=rf"stages\.gft\.group\.{source} must be 0 for {algorithm}"):
            load_recipe(overrides=overrides)


def test_a_grpo_group_of_one_is_refused():
    with pytest.raises(ConfigError, match=r"stages\.grpo\.group: grpo normalises .* needs 2 rows or more; it has 1"):
        load_recipe(overrides=["stages.grpo.group.self=1"])


def test_an_objective_unpickles_without_the_recipe():
    """The learner's process unpickles the objective: that must import the losses, not the
    recipe's config (and with it data, rewards and the embedded model)."""
    objective = pickle.dumps(objective_for(StageConfig(name="gft", algorithm="gft", tau=0.3)))
    probe = ("import pickle, sys; objective = pickle.loads(sys.stdin.buffer.read()); "
             "print(objective.keywords['tau'], 'pipeline.recipe.config' in sys.modules, 'pipeline.embedded' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], input=objective, capture_output=True, check=True)
    assert out.stdout.decode().split() == ["0.3", "False", "False"]


def test_each_objective_computes_its_own_loss():
    """On one token batch, the objectives differ as their specs say: SFT the mean NLL, DFT the
    probability-weighted one, GFT with advantages and DCR, GRPO the surrogate at ratio 1."""
    from workers.learner import TokenBatch

    log_probs = torch.log(torch.tensor([0.5, 0.05, 0.9]))
    mask = torch.ones(3)
    tokens = TokenBatch(mask, torch.tensor([1.0, 1.0, -1.0]), log_probs.clone(), None, torch.zeros(3, dtype=torch.long))
    loss = {name: objective_for(StageConfig(name="s", algorithm=name, steps=10))(log_probs, tokens)[0].item()
            for name in ALGORITHMS}
    assert loss["sft"] == pytest.approx(float(-log_probs.mean()))
    assert loss["dft"] == pytest.approx(float(-(log_probs.exp() * log_probs).mean()))
    # tau 0.1: the 0.05 token is rectified (c = p); the others keep c = 1
    expected_gft = -(1.0 * log_probs[0] + 1.0 * 0.05 * log_probs[1] - 1.0 * log_probs[2]) / 3
    assert loss["gft"] == pytest.approx(float(expected_gft))
    # at ratio 1 (old = current log-probs) the clipped surrogate is the token mean of -A
    assert loss["grpo"] == pytest.approx(-(1.0 + 1.0 - 1.0) / 3)
    # sources 0, the expert's: CHORD's first step is mu_peak (0.9) x the mean NLL
    assert loss["chord"] == pytest.approx(0.9 * float(-log_probs.mean()))


def test_a_chord_objective_follows_its_mu_schedule_step_by_step():
    stage = StageConfig(name="c", algorithm="chord", steps=10, mu_peak=0.8, mu_valley=0.2)
    mus = [objective_for(stage, step).keywords["mu"] for step in (1, 6, 10)]
    assert mus == pytest.approx([0.8, 0.5, 0.2 + 0.3 * (1 + math.cos(math.pi * 9 / 10))])
    phi = objective_for(replace(stage, sft_token_weight="phi"), 1)
    assert phi.keywords["phi"] and not objective_for(stage, 1).keywords["phi"]


@pytest.mark.parametrize("group, message", [
    ({"expert": 0, "self": 4}, "it needs expert >= 1 and self >= 2, it has expert 0 and self 4"),
    ({"expert": 1, "self": 1}, "it needs expert >= 1 and self >= 2, it has expert 1 and self 1"),
])
def test_a_chord_group_without_an_expert_row_or_two_own_samples_is_refused(group, message):
    overrides = ["stages.gft.algorithm=chord", "stages.gft.group.teacher=0",
                 *(f"stages.gft.group.{k}={v}" for k, v in group.items())]
    with pytest.raises(ConfigError, match=rf"stages\.gft\.group: chord imitates .*{message}"):
        load_recipe(overrides=overrides)


def test_an_unknown_sft_token_weight_is_refused():
    with pytest.raises(ConfigError, match=r"stages\.gft\.sft_token_weight: 'entropy' is not one of uniform, phi"):
        load_recipe(overrides=["stages.gft.sft_token_weight=entropy"])


@pytest.mark.parametrize("algorithm, kl_coef, kl_every, needed", [
    ("gft", 0.0, 10, True),  # the KL measured every 10 steps
    ("gft", 0.0, 0, False),
    ("sft", 0.0, 0, False),
    ("grpo", 0.0, 0, False),
    ("grpo", 0.001, 0, True),  # in the loss
])
def test_the_reference_is_held_only_for_a_kl_in_the_loss_or_measured(algorithm, kl_coef, kl_every, needed):
    stage = StageConfig(name="s", algorithm=algorithm, kl_coef=kl_coef, kl_every=kl_every)
    assert needs_reference(stage) is needed
