"""Planning a comparison: every pipeline from one base, equal budgets, cache keys."""

from dataclasses import replace

import pytest

from pipeline.compare import config_hash, plan, run_folder
from pipeline.config import GroupConfig, load_recipe
from pipeline.configio import ConfigError

SMALL = ["embedded.n_train=64", "embedded.n_test=16", "embedded.n_ood=16"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    recipe = load_recipe(None, SMALL)
    pipelines = ["grpo", "sft", "dft", "gft", "sft_mix", "gft_nomix", "gft_dcr_offpolicy", "gft_source_norm"]
    return recipe, plan(recipe, pipelines, seeds=[0, 1], eval_every=25, cache=cache), cache


def test_every_pipeline_starts_from_the_shared_base_with_equal_budgets(experiment):
    recipe, experiment, cache = experiment
    assert [s.name for s in experiment.base.stages] == ["warmup"]
    base_checkpoint = str(run_folder(cache, experiment.base) / "checkpoints" / "warmup")
    stage_one, grpo = recipe.stage("gft"), recipe.stage("grpo")
    for (pipeline, seed), config in experiment.runs.items():
        assert config.model.path == base_checkpoint and config.seed == seed
        assert config.data.eval_files == experiment.base.data.eval_files
        assert config.stages[-1] == replace(grpo, eval_every=25)  # the same GRPO stage everywhere
        if pipeline == "grpo":
            assert len(config.stages) == 1
            continue
        first = config.stages[0]
        assert (first.name, first.steps, first.prompts_per_step, first.lr, first.eval_every) == (
            "stage1", stage_one.steps, stage_one.prompts_per_step, stage_one.lr, 25)
    groups = {p: experiment.runs[(p, 0)].stages[0] for p in ("sft", "dft", "gft", "sft_mix", "gft_nomix",
                                                              "gft_dcr_offpolicy", "gft_source_norm")}
    assert (groups["sft"].algorithm, groups["sft"].group) == ("sft", GroupConfig(1, 0, 0))
    assert (groups["dft"].algorithm, groups["dft"].group) == ("dft", GroupConfig(1, 0, 0))
    assert (groups["gft"].algorithm, groups["gft"].group) == ("gft", GroupConfig(1, 3, 4))
    assert (groups["sft_mix"].algorithm, groups["sft_mix"].group) == ("sft", GroupConfig(1, 3, 0))
    assert (groups["gft_nomix"].algorithm, groups["gft_nomix"].group) == ("gft", GroupConfig(1, 0, 4))
    # the ablations change one setting of the gft stage each, and nothing else
    assert groups["gft_dcr_offpolicy"] == replace(groups["gft"], dcr_sources=["expert", "teacher"])
    assert groups["gft_source_norm"] == replace(groups["gft"], advantage_groups="prompt_and_source")
    assert groups["gft"].dcr_sources == ["expert", "teacher", "self"] and groups["gft"].advantage_groups == "prompt"


def test_the_cache_key_is_what_the_run_computes(experiment):
    _, experiment, _ = experiment
    config = experiment.runs[("gft", 0)]
    assert config_hash(replace(config, output_dir="elsewhere", name="renamed")) == config_hash(config)
    changed = replace(config, stages=[replace(config.stages[0], lr=1e-5), *config.stages[1:]])
    assert config_hash(changed) != config_hash(config)
    assert config_hash(experiment.runs[("gft", 1)]) != config_hash(config)  # another seed


def test_unknown_pipeline_and_unfit_recipe_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown ppo; known: grpo, sft"):
        plan(load_recipe(None, SMALL), ["ppo"], [0], 25, tmp_path)
    no_grpo = load_recipe(None, [*SMALL, "stages=[{name: a, algorithm: sft, steps: 1, group: {self: 0}}]"])
    with pytest.raises(ConfigError, match="end in a stage 1"):
        plan(no_grpo, ["gft"], [0], 25, tmp_path)
