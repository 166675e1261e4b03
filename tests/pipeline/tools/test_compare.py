"""Planning a comparison: every pipeline from one base, equal budgets, cache keys, and a
learning-rate sweep on prompts held out of the training data."""

import json
import shutil
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.errors import ConfigError
from pipeline.recipe.config import GroupConfig, load_recipe, validate
from pipeline.tools.compare import (
    ROOT,
    SweepSettings,
    best_rate,
    check_val_unseen,
    choose_lrs,
    choose_rate,
    code_hash,
    config_hash,
    extend_grid,
    plan,
    prompt_text,
    run_folder,
    seeds_per_pipeline,
    shared_inputs,
)

SMALL = ["embedded.n_train=64", "embedded.n_test=16", "embedded.n_ood=16"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    recipe = load_recipe(None, SMALL)
    pipelines = ["grpo", "sft", "dft", "gft", "sft_mix", "gft_nomix", "gft_dcr_offpolicy", "gft_source_norm"]
    return recipe, plan(recipe, {p: [0, 1] for p in pipelines}, eval_every=25, cache=cache), cache


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


def test_chord_replaces_stage_one_and_grpo_by_one_stage_of_both_budgets_at_its_own_rate(tmp_path):
    """CHORD-mu and CHORD-phi: one RL stage from the base, the steps of stage 1 and GRPO together,
    GRPO's prompts and samples with one expert row a prompt; the sweep tunes its rate."""
    recipe = load_recipe(None, SMALL)
    stage_one, grpo = recipe.stage("gft"), recipe.stage("grpo")
    experiment = plan(recipe, {"chord": [0], "chord_phi": [0]}, eval_every=25, cache=tmp_path,
                      lrs={"chord": 3e-5, "chord_phi": 7e-5})
    for name, mu, weight, lr in (("chord", (0.9, 0.05), "uniform", 3e-5), ("chord_phi", (0.1, 0.1), "phi", 7e-5)):
        (stage,) = experiment.runs[(name, 0)].stages
        assert (stage.name, stage.algorithm, stage.steps, stage.lr) == ("grpo", "chord", stage_one.steps + grpo.steps, lr)
        assert stage.group == GroupConfig(expert=1, teacher=0, self=grpo.group.self)
        assert (stage.prompts_per_step, stage.clip_ratio) == (grpo.prompts_per_step, grpo.clip_ratio)
        assert ((stage.mu_peak, stage.mu_valley), stage.sft_token_weight) == (mu, weight)


def test_shares_of_the_prompts_rerun_each_pipeline_with_a_stage_1_on_that_share_and_nothing_else(tmp_path):
    recipe = load_recipe(None, SMALL)
    seeds = {"grpo": [0], "gft": [0, 1], "chord": [0]}
    experiment = plan(recipe, seeds, eval_every=25, cache=tmp_path, lrs={"gft": 3e-5, "chord": 1e-5},
                      fractions=(0.25, 0.5))
    assert list(experiment.runs) == [("grpo", 0), ("gft", 0), ("gft@0.25", 0), ("gft@0.5", 0), ("chord", 0),
                                     ("gft", 1), ("gft@0.25", 1), ("gft@0.5", 1)]  # seed by seed; stage 1 only
    full = experiment.runs[("gft", 1)]
    for fraction in (0.25, 0.5):
        share = experiment.runs[(f"gft@{fraction}", 1)]
        assert share.name == f"gft-data{fraction:g}-seed1" and share.seed == 1
        assert share.stages == [replace(full.stages[0], data_fraction=fraction), full.stages[1]]
        assert share.stages[0].lr == 3e-5 and run_folder(tmp_path, share) != run_folder(tmp_path, full)


def test_the_retain_family_goes_into_the_base_alone_and_every_run_evaluates_it(tmp_path):
    recipe = load_recipe(None, [*SMALL, "embedded.n_retain_train=16", "eval.splits=[test,retain]"])
    inputs = shared_inputs(recipe, tmp_path)
    assert inputs.retain_train.endswith("retain_train.parquet") and inputs.evals["retain"].endswith("retain.parquet")
    experiment = plan(recipe, {"gft": [0]}, eval_every=25, cache=tmp_path, inputs=inputs)
    assert [s.train_files for s in experiment.base.stages] == [[*inputs.train, inputs.retain_train]]
    run = experiment.runs[("gft", 0)]
    assert [s.train_files for s in run.stages] == [None, None] and run.data.train_files == inputs.train
    assert run.data.eval_files == inputs.evals and run.eval.splits == ["test", "retain"]
    validate(run, check_paths=False)  # as a resume reads it: its model is the base's, no warm-up to mix into


def test_the_cache_key_is_what_the_run_computes(experiment):
    _, experiment, _ = experiment
    config = experiment.runs[("gft", 0)]
    assert config_hash(replace(config, output_dir="elsewhere", name="renamed")) == config_hash(config)
    changed = replace(config, stages=[replace(config.stages[0], lr=1e-5), *config.stages[1:]])
    assert config_hash(changed) != config_hash(config)
    assert config_hash(experiment.runs[("gft", 1)]) != config_hash(config)  # another seed


def test_unknown_pipeline_and_unfit_recipe_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown ppo; known: grpo, sft"):
        plan(load_recipe(None, SMALL), {"ppo": [0]}, 25, tmp_path)
    no_grpo = load_recipe(None, [*SMALL, "stages=[{name: a, algorithm: sft, steps: 1, group: {self: 0}}]"])
    with pytest.raises(ConfigError, match="end in a stage 1"):
        plan(no_grpo, {"gft": [0]}, 25, tmp_path)


def test_pipelines_may_run_more_seeds_than_the_rest(tmp_path):
    seeds = seeds_per_pipeline("grpo, sft:4,gft:3", first_seed=7, count=2)
    assert seeds == {"grpo": [7, 8], "sft": [7, 8, 9, 10], "gft": [7, 8, 9]}
    experiment = plan(load_recipe(None, SMALL), seeds, 25, tmp_path)
    # seed by seed, so an experiment cut short still has every pipeline's first seeds to pair
    assert list(experiment.runs) == [("grpo", 7), ("sft", 7), ("gft", 7), ("grpo", 8), ("sft", 8), ("gft", 8),
                                     ("sft", 9), ("gft", 9), ("sft", 10)]
    for wrong in ("sft:0", "sft:x", "sft:-2"):
        with pytest.raises(ConfigError, match=f"--pipelines: '{wrong}': the seed count after ':'"):
            seeds_per_pipeline(wrong, 0, 2)
    with pytest.raises(ConfigError, match="unknown ppo"):
        seeds_per_pipeline("grpo,ppo:3", 0, 2)
    with pytest.raises(ConfigError, match="--seeds: 0 seeds per pipeline; give 1 or more"):
        seeds_per_pipeline("grpo", 0, 0)


def test_the_cache_key_changes_with_the_code_that_trains_not_with_the_tools(tmp_path):
    for package in ("pipeline", "workers"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_hash(tmp_path)
    assert before == code_hash(ROOT)  # the same code, wherever it lies
    report = tmp_path / "pipeline" / "tools" / "report.py"
    report.write_text(report.read_text() + "\n# a comment\n")
    code_hash.cache_clear()
    assert code_hash(tmp_path) == before
    loss = tmp_path / "pipeline" / "core" / "losses.py"
    loss.write_text(loss.read_text() + "\n# a comment\n")
    code_hash.cache_clear()
    assert code_hash(tmp_path) != before


def key(table) -> list[str]:
    return sorted(json.dumps(row, sort_keys=True) for row in table.to_pylist())


def operand_sets(path) -> set[tuple[int, ...]]:
    return {tuple(sorted(map(int, row["prompt"][0]["content"].removeprefix("Compute ").removesuffix(".").split("+"))))
            for row in pq.read_table(path).to_pylist()}


def prompts(path) -> list[str]:
    return [prompt_text(p) for p in pq.read_table(path).column("prompt").to_pylist()]


def test_the_embedded_val_split_holds_problems_no_training_file_holds_and_test_is_untouched(tmp_path):
    recipe = load_recipe(None, SMALL)
    inputs = shared_inputs(recipe, tmp_path / "cache", val_prompts=16)
    plain = shared_inputs(recipe, tmp_path / "plain")
    assert pq.read_table(inputs.val).num_rows == 16 and inputs.val not in inputs.evals.values()
    # no problem of val, not even one reordered, in any file a run trains on
    assert not operand_sets(inputs.val) & set().union(*map(operand_sets, inputs.train))
    assert not set(prompts(inputs.val)) & {p for path in inputs.train for p in prompts(path)}
    assert key(pq.read_table(inputs.evals["test"])) == key(pq.read_table(plain.evals["test"]))
    again = shared_inputs(recipe, tmp_path / "cache", val_prompts=16)
    assert key(pq.read_table(again.val)) == key(pq.read_table(inputs.val))  # the same draw every time


def test_user_data_holds_out_distinct_prompts_with_every_row_of_each(tmp_path):
    rows = pq.read_table(shared_inputs(load_recipe(None, SMALL), tmp_path / "embedded").train[0])
    repeated = pa.concat_tables([rows, rows.slice(0, 8)])  # 8 prompts twice over
    train = tmp_path / "train.parquet"
    pq.write_table(repeated, train)
    recipe = load_recipe(None, [*SMALL, f"data.train_files=[{train}]"])
    inputs = shared_inputs(recipe, tmp_path / "cache", val_prompts=16)
    kept, val = prompts(inputs.train[0]), prompts(inputs.val)
    assert len(val) == len(set(val)) == 16 and set(val) <= set(prompts(train))
    assert kept == [p for p in prompts(train) if p not in set(val)]  # every row of a prompt on one side
    distinct = len(set(prompts(train)))
    with pytest.raises(ConfigError, match=f"--val-prompts: {distinct} prompts held out of {distinct} distinct prompts"):
        shared_inputs(recipe, tmp_path / "other", val_prompts=distinct)


def test_a_val_file_that_repeats_a_training_prompt_is_refused_naming_file_row_and_field(tmp_path):
    inputs = shared_inputs(load_recipe(None, SMALL), tmp_path / "cache")
    table = pq.read_table(inputs.train[0]).slice(2, 1).to_pylist()
    table[0]["prompt"] = [{**m, "content": f"  {m['content'].upper()} "}  # case and spacing aside, a training prompt
                          for m in table[0]["prompt"]]
    val = tmp_path / "val.parquet"
    pq.write_table(pa.Table.from_pylist(table), val)
    with pytest.raises(ConfigError, match=rf"{val}: row 0: field prompt: also in the training file"):
        check_val_unseen(str(val), inputs.train)
    recipe = load_recipe(None, [*SMALL, f"data.eval_files={{val: {val}}}", "eval.splits=[val]"])
    with pytest.raises(ConfigError, match=r"val.parquet: row 0: field prompt"):
        shared_inputs(recipe, tmp_path / "named", val_prompts=16)


def test_the_tie_rule_takes_the_smallest_rate_within_one_standard_error_of_the_best():
    scores = {1e-5: (0.40, 0.02), 1e-4: (0.47, 0.01), 1e-3: (0.50, 0.04)}
    assert best_rate(scores) == 1e-3 and choose_rate(scores) == 1e-4  # 0.47 >= 0.50 - 0.04; 0.40 is not
    assert choose_rate({1e-4: (0.5, 0.0), 1e-3: (0.5, 0.0)}) == 1e-4  # an exact tie: the smaller


def test_a_grid_is_extended_past_the_edge_where_the_best_lies_up_to_the_limit():
    added = {"low": 0, "high": 0}
    assert extend_grid([1e-4, 1e-3], 1e-3, added, limit=1) == pytest.approx(4e-3) and added == {"low": 0, "high": 1}
    assert extend_grid([1e-4, 1e-3, 4e-3], 4e-3, added, limit=1) is None  # that side's limit reached
    assert extend_grid([1e-4, 1e-3], 1e-4, added, limit=1) == pytest.approx(2.5e-5)
    assert extend_grid([1e-4, 1e-3, 4e-3], 1e-3, {"low": 0, "high": 0}, limit=2) is None  # bracketed


def test_rates_are_chosen_on_val_after_grpo_over_sweep_seeds_and_the_runs_take_them(tmp_path):
    recipe = load_recipe(None, SMALL)
    cache = tmp_path / "cache"
    inputs = shared_inputs(recipe, cache, val_prompts=16)
    settings = SweepSettings(seeds=2, extensions=1)

    # val pass@1 after GRPO as the runs would leave it: sft best at 1e-4, within one standard error
    # of 1e-3; gft rising with the rate, so its grid grows past 1e-3 once, to 4e-3, and stops there
    truth = {"sft": {1e-4: 0.50, 1e-3: 0.49, 2.5e-5: 0.2}, "gft": {1e-4: 0.25, 1e-3: 0.5, 4e-3: 0.75}}
    ran = []

    def run(config, run_dir, **_):
        run_dir.mkdir(parents=True)
        if config.name == "base":  # the shared warm-up, run once
            (run_dir / "eval.json").write_text("{}")
            return
        name, seed, (stage_one, grpo) = config.name.split("-")[1], config.seed, config.stages
        ran.append((name, stage_one.lr, seed))
        assert (stage_one.name, grpo.name, grpo.lr) == ("stage1", "grpo", recipe.stage("grpo").lr)  # the whole pipeline
        assert config.eval.splits == ["val"] and config.data.eval_files == {"val": inputs.val}
        assert config.data.train_files == inputs.train and seed in (1000, 1001)
        score = truth[name][stage_one.lr] + (0.01 if seed == 1000 else -0.01)
        (run_dir / "eval.json").write_text(json.dumps({"evals": {"grpo": {"val": {"pass@1": score, "accuracy": 0}}}}))

    choices = choose_lrs(recipe, ["grpo", "sft", "gft"], [1e-4, 1e-3], settings, cache, inputs, run)
    assert sorted({(name, lr) for name, lr, _ in ran}) == [  # grpo has no stage 1; sft's best is inside
        ("gft", 1e-4), ("gft", 1e-3), ("gft", 4e-3), ("sft", 2.5e-5), ("sft", 1e-4), ("sft", 1e-3)]
    assert len(ran) == 12  # each (method, rate) once per sweep seed: the cache answers the second round
    assert choices["sft"].lr == 1e-4 and choices["sft"].bracketed
    assert choices["gft"].lr == 4e-3 and not choices["gft"].bracketed  # at the edge the limit stopped
    assert choices["gft"].scores[1e-3] == pytest.approx((0.5, 0.01))  # mean and standard error over 2 seeds
    assert choose_lrs(recipe, ["sft", "gft"], [1e-4, 1e-3], settings, cache, inputs, run) == choices
    assert len(ran) == 12  # all from the cache

    experiment = plan(recipe, {p: [0, 1] for p in ("grpo", "sft", "gft")}, 25, cache, inputs,
                      {n: c.lr for n, c in choices.items()})
    assert experiment.runs[("gft", 1)].stages[0].lr == 4e-3 and experiment.runs[("sft", 0)].stages[0].lr == 1e-4
    assert experiment.runs[("gft", 0)].stages[1] == replace(recipe.stage("grpo"), name="grpo", eval_every=25)
    assert "val" not in experiment.runs[("gft", 0)].data.eval_files
