"""The recipe: YAML -> typed tree, dotted overrides, validation errors that name the key, and the
shipped recipes under recipes/."""

from __future__ import annotations

import re
import textwrap

import pytest

from pipeline.core.errors import ConfigError
from pipeline.recipe.config import (
    DEFAULT_RECIPE,
    RECIPES_DIR,
    GroupConfig,
    RunConfig,
    StageConfig,
    load_recipe,
    validate,
)
from pipeline.recipe.configio import apply_override, build, read_yaml, to_dict

RECIPE = textwrap.dedent(
    """\
    name: tiny
    seed: 3
    model:
      path: embedded
    rollout:
      max_new_tokens: 32
    stages:
      - name: gft
        algorithm: gft
        steps: 10
        lr: 1e-6          # YAML 1.1 reads this as the string "1e-6"
        group: {expert: 1, teacher: 2, self: 3}
        tau: 0.2
      - name: grpo
        algorithm: grpo
        steps: 5
        group: {expert: 0, teacher: 0, self: 8}
      - name: final
        algorithm: eval
    """
)


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def _error(recipe, *overrides) -> str:
    with pytest.raises(ConfigError) as info:
        load_recipe(recipe, list(overrides))
    return str(info.value)


# --- loading ------------------------------------------------------------------------------


def test_recipe_loads_into_the_typed_tree(recipe):
    config = load_recipe(recipe)
    assert isinstance(config, RunConfig)
    assert (config.name, config.seed, config.model.path) == ("tiny", 3, "embedded")
    assert config.rollout.max_new_tokens == 32
    assert config.rollout.backend == "hf"  # default kept
    assert [s.name for s in config.stages] == ["gft", "grpo", "final"]
    gft = config.stage("gft")
    assert isinstance(gft, StageConfig) and isinstance(gft.group, GroupConfig)
    assert (gft.group.expert, gft.group.teacher, gft.group.self) == (1, 2, 3)
    assert gft.steps == 10 and gft.tau == 0.2
    assert isinstance(gft.lr, float) and gft.lr == 1e-6
    assert config.stage("grpo").group == GroupConfig(expert=0, teacher=0, self=8)
    assert config.stage("final").algorithm == "eval"


def test_overrides_by_stage_name_and_by_index(recipe):
    config = load_recipe(
        recipe,
        [
            "stages.gft.lr=1e-6",  # a string to YAML 1.1, a float in the tree
            "stages.gft.group.self=6",
            "stages.1.steps=7",
            "stages.grpo.kl_coef=0.001",
            "rollout.temperature=0.7",
            "name=renamed",
        ],
    )
    gft, grpo = config.stage("gft"), config.stage("grpo")
    assert isinstance(gft.lr, float) and gft.lr == 1e-6
    assert gft.group.self == 6
    assert grpo.steps == 7 and grpo.kl_coef == 0.001
    assert config.rollout.temperature == 0.7 and config.name == "renamed"


def test_override_of_a_list_and_a_new_section(recipe, tmp_path):
    train = tmp_path / "train.parquet"
    train.write_bytes(b"")
    config = load_recipe(recipe, [f"data.train_files=[{train}]", "teacher.temperature=0.5"])
    assert config.data.train_files == [str(train)]
    assert config.teacher.temperature == 0.5


def test_config_round_trips_through_to_dict(recipe):
    config = load_recipe(recipe, ["stages.gft.lr=3e-5"])
    assert build(RunConfig, to_dict(config)) == config


# --- mistakes the user has to fix -------------------------------------------------------------


def test_unknown_key_suggests_the_nearest_valid_one(recipe):
    message = _error(recipe, "stages.gft.tua=0.5")
    assert "tua" in message and "did you mean 'tau'" in message
    message = _error(recipe, "rollot.temperature=0.5")
    assert "'rollot'" in message and "did you mean 'rollout'" in message


def test_unknown_key_in_the_recipe_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.replace("max_new_tokens: 32", "max_new_token: 32"))
    message = _error(path)
    assert "rollout.max_new_token" in message and "did you mean 'max_new_tokens'" in message


def test_wrong_type_names_the_key(recipe):
    message = _error(recipe, "stages.gft.steps=abc")
    assert re.search(r"stages\.\w+\.steps", message) and "'abc'" in message and "integer" in message
    message = _error(recipe, "rollout.temperature=hot")
    assert "rollout.temperature" in message and "number" in message


@pytest.mark.parametrize(
    "overrides, key",
    [
        (
            ["stages.gft.group.expert=0", "stages.gft.group.teacher=0", "stages.gft.group.self=0"],
            "stages.gft.group",
        ),
        (["stages.gft.group.teacher=-1"], "stages.gft.group.teacher"),
        (["stages.gft.tau=0"], "stages.gft.tau"),
        (["stages.gft.tau=-0.1"], "stages.gft.tau"),
        (["stages.gft.lr=-1e-6"], "stages.gft.lr"),
        (["stages.gft.lr=nan"], "stages.gft.lr"),
        (["stages.gft.steps=0"], "stages.gft.steps"),
        (["stages.gft.prompts_per_step=0"], "stages.gft.prompts_per_step"),
        (["stages.grpo.group.expert=1"], "stages.grpo.group"),
        (["stages.grpo.group.self=1"], "stages.grpo.group"),
        (["stages.grpo.clip_ratio=0"], "stages.grpo.clip_ratio"),
        (["stages.gft.algorithm=sft"], "stages.gft.group.self"),  # sft takes off-policy rows only
        (["stages.gft.algorithm=ppo"], "stages.gft.algorithm"),
        (["stages.1.name=gft"], "stages"),  # duplicate stage names
        (["rollout.backend=sglang"], "rollout.backend"),
        (["model.dtype=float16"], "model.dtype"),
        (["rollout.max_num_seqs=0"], "rollout.max_num_seqs"),
        (["reward.timeout_s=0"], "reward.timeout_s"),
        (["reward.num_workers=0"], "reward.num_workers"),
        (["reward.function=no/such/reward.py"], "reward.function"),
        (["reward.extraction=loose"], "reward.extraction"),
        (["stages.gft.dcr_sources=[expert,student]"], "stages.gft.dcr_sources"),
        (["stages.gft.advantage_groups=source"], "stages.gft.advantage_groups"),
        (["eval.max_prompts=0"], "eval.max_prompts"),
        (["data.bad_rows=drop"], "data.bad_rows"),
        (["checkpoint.every=-1"], "checkpoint.every"),
        (["checkpoint.keep_last=0"], "checkpoint.keep_last"),
        (["max_consecutive_skips=0"], "max_consecutive_skips"),
        (["ray.max_actor_restarts=-1"], "ray.max_actor_restarts"),
        (["learner.fsdp=true"], "learner.fsdp"),  # with one learner there is nothing to shard across
        (["logging.backends=[jsonl,comet]"], "logging.backends"),
        (["logging.backends=[tensorboard,wandb]"], "logging.backends"),  # metrics.jsonl is always written
        (["logging.backends=[jsonl,wandb,wandb]"], "logging.backends"),
        (["logging.wandb_mode=disabled"], "logging.wandb_mode"),
    ],
)
def test_impossible_values_are_refused_with_the_key_named(recipe, overrides, key):
    message = _error(recipe, *overrides)
    assert message.startswith(key), message


def test_a_logger_that_is_not_installed_is_refused_with_how_to_install_it(recipe, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else find_spec(name, *a))
    message = _error(recipe, "logging.backends=[jsonl,mlflow]")
    assert message == "logging.backends: mlflow is not installed here: pip install -e '.[mlflow]'"
    assert load_recipe(recipe, ["logging.backends=[jsonl,tensorboard,wandb]"]).logging.backends[-1] == "wandb"


def test_the_lenient_extraction_is_the_built_in_verifiers_only(recipe, tmp_path):
    reward = tmp_path / "reward.py"
    reward.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n    return 0.0\n")
    message = _error(recipe, f"reward.function={reward}", "reward.extraction=lenient")
    assert message.startswith("reward.extraction applies to the built-in verifiers"), message


def test_duplicate_stage_names(recipe):
    assert "stage names repeat" in _error(recipe, "stages.1.name=gft")


def test_empty_stage_list(recipe):
    assert _error(recipe, "stages=[]").startswith("stages")


def test_model_folder_that_does_not_exist(recipe, tmp_path):
    train = tmp_path / "train.parquet"
    train.write_bytes(b"")
    missing = tmp_path / "no-such-model"
    message = _error(recipe, f"model.path={missing}", f"data.train_files=[{train}]")
    assert message.startswith("model.path") and str(missing) in message


def _model_folder(folder, *files):
    folder.mkdir()
    for name in files:
        (folder / name).write_bytes(b"{}")  # validation looks at names only
    return folder


def test_real_model_needs_training_data(recipe, tmp_path):
    model = _model_folder(tmp_path / "model", "config.json", "model.safetensors")
    assert _error(recipe, f"model.path={model}").startswith("data.train_files")


@pytest.mark.parametrize("key", ["model.path", "teacher.model_path"])
def test_a_model_folder_needs_a_config_and_safetensors_weights(recipe, tmp_path, key):
    train = tmp_path / "train.parquet"
    train.write_bytes(b"")

    def message(folder):
        return _error(recipe, f"{key}={folder}", f"data.train_files=[{train}]")

    bare = _model_folder(tmp_path / "bare", "model.safetensors")
    assert message(bare) == f"{key}: {bare} has no config.json; it is not a Hugging Face model folder"
    pickled = _model_folder(tmp_path / "pickled", "config.json", "pytorch_model.bin", "training_args.bin")
    assert message(pickled).startswith(
        f"{key}: {pickled} holds only pickle weights (pytorch_model.bin, training_args.bin); this tool loads "
        "safetensors only, convert them first"
    )
    assert "save_pretrained(folder, safe_serialization=True)" in message(pickled)
    empty = _model_folder(tmp_path / "empty", "config.json")
    assert message(empty) == f"{key}: {empty} holds no weights (no *.safetensors file)"
    assert message(tmp_path / "absent") == f"{key}: {tmp_path / 'absent'} is not a folder"

    sharded = _model_folder(tmp_path / "sharded", "config.json", "model-00001-of-00002.safetensors",
                            "model-00002-of-00002.safetensors", "model.safetensors.index.json", "optimizer.pt")
    load_recipe(recipe, [f"{key}={sharded}", f"data.train_files=[{train}]"])  # a stray pickle beside is fine


def test_train_file_that_does_not_exist(recipe, tmp_path):
    missing = tmp_path / "missing.parquet"
    message = _error(recipe, f"data.train_files=[{missing}]")
    assert message.startswith("data.train_files") and str(missing) in message
    message = _error(recipe, f"data.eval_files.math500={missing}")
    assert message.startswith("data.eval_files.math500")


def test_a_jsonl_eval_file_must_be_a_known_benchmark(recipe, tmp_path):
    mystery = tmp_path / "mystery.jsonl"
    mystery.write_text("{}\n")
    message = _error(recipe, f"data.eval_files.mystery={mystery}")
    assert message.startswith("data.eval_files.mystery") and "math_oai, amc23" in message


def test_missing_required_stage_key(recipe):
    # list items are named by index today; by their name would be as good (stages.grpo.algorithm)
    assert re.match(
        r"stages\.(1|grpo)\.algorithm: expected a string", _error(recipe, "stages.grpo.algorithm=null")
    )
    with pytest.raises(ConfigError, match=r"missing required key 'stages\.(0|x)\.algorithm'"):
        build(RunConfig, {"stages": [{"name": "x"}]})


def test_bad_overrides(recipe):
    assert "key=value" in _error(recipe, "stages.gft.lr")
    message = _error(recipe, "stages.nosuch.lr=1e-6")
    assert "nosuch" in message and "gft" in message  # lists the stages there are


def test_missing_recipe_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        load_recipe(missing)


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("stages:\n  - name: gft\n    algorithm: [gft\n")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ".*not valid YAML"):
        load_recipe(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ".*mapping"):
        load_recipe(path)


# --- the shipped recipes ----------------------------------------------------------------------

ALL_RECIPES = sorted(RECIPES_DIR.glob("**/*.yaml"))
QWEN = RECIPES_DIR / "qwen2.5-math-1.5b"
BASELINES = RECIPES_DIR / "baselines"


def _recipe(path) -> RunConfig:
    return build(RunConfig, read_yaml(path))


def test_the_recipes_are_there():
    names = {str(p.relative_to(RECIPES_DIR)) for p in ALL_RECIPES}
    assert {
        "qwen2.5-math-1.5b/gft.yaml",
        "qwen2.5-math-1.5b/gft_then_grpo.yaml",
        "baselines/sft_then_grpo.yaml",
        "baselines/dft_then_grpo.yaml",
        "qwen2.5-math-7b/gft_then_grpo.yaml",
    } <= names


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: str(p.relative_to(RECIPES_DIR)))
def test_every_recipe_builds_and_validates(path):
    # real-model recipes point at model folders that are not here: all but their paths is checked
    config = _recipe(path)
    assert config.stages and len({s.name for s in config.stages}) == len(config.stages)
    validate(config, check_paths=config.model.path == "embedded")


def _placeholders_filled(path, tmp_path) -> RunConfig:
    """The recipe with its placeholder paths pointed at files that exist: it must validate."""
    tree = read_yaml(path)
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    for name in ("config.json", "model.safetensors"):  # what validation looks for in a model folder
        (model / name).write_bytes(b"{}")
    apply_override(tree, f"model.path={model}")
    files = []
    for i, _ in enumerate(tree["data"]["train_files"]):
        files.append(tmp_path / f"train{i}.parquet")
        files[-1].write_bytes(b"")
    apply_override(tree, f"data.train_files=[{', '.join(map(str, files))}]")
    for split in tree["data"]["eval_files"]:
        (tmp_path / f"{split}.parquet").write_bytes(b"")
        apply_override(tree, f"data.eval_files.{split}={tmp_path / f'{split}.parquet'}")
    config = build(RunConfig, tree)
    validate(config)
    return config


def test_qwen_gft_recipe_has_the_paper_settings(tmp_path):
    config = _recipe(QWEN / "gft.yaml")
    assert config.model.path == "/path/to/Qwen2.5-Math-1.5B" and config.model.dtype == "bfloat16"
    assert config.learner.fsdp and config.learner.gradient_checkpointing
    assert config.data.train_files and all(f.endswith(".parquet") for f in config.data.train_files)
    assert config.data.max_prompt_length == 1024
    assert set(config.eval.splits) <= set(config.data.eval_files)
    rollout = config.rollout
    assert (rollout.backend, rollout.temperature, rollout.max_new_tokens) == ("vllm", 1.0, 2048)
    (gft,) = config.stages
    assert (gft.name, gft.algorithm) == ("gft", "gft")
    assert gft.tau == 0.1 and gft.group == GroupConfig(expert=1, teacher=3, self=4)
    assert gft.lr == 1e-6 and gft.prompts_per_step == 128 and gft.max_grad_norm == 1.0
    assert gft.updates_per_batch == 4 and gft.weight_decay == 0.01 and gft.kl_coef == 0.0  # the reference's
    assert config.reward.extraction == "lenient"  # its verifier's fallbacks
    assert gft.steps == 500 and gft.eval_every == 50
    _placeholders_filled(QWEN / "gft.yaml", tmp_path)


def test_qwen_gft_then_grpo_recipe(tmp_path):
    config = _recipe(QWEN / "gft_then_grpo.yaml")
    gft_only = _recipe(QWEN / "gft.yaml")
    assert [(s.name, s.algorithm) for s in config.stages] == [
        ("gft", "gft"),
        ("grpo", "grpo"),
        ("final_eval", "eval"),
    ]
    assert config.stage("gft") == gft_only.stage("gft")  # the same GFT stage
    for section in ("model", "data", "rollout", "teacher", "reward", "eval", "ray"):
        assert getattr(config, section) == getattr(gft_only, section), section
    grpo = config.stage("grpo")
    assert grpo.group == GroupConfig(expert=0, teacher=0, self=8)
    assert grpo.lr == 1e-6 and grpo.clip_ratio == 0.2 and grpo.kl_coef == 0.0
    assert grpo.prompts_per_step == 128 and grpo.steps == 500
    _placeholders_filled(QWEN / "gft_then_grpo.yaml", tmp_path)


@pytest.mark.parametrize("algorithm", ["sft", "dft"])
def test_baseline_recipes(algorithm):
    config = _recipe(BASELINES / f"{algorithm}_then_grpo.yaml")
    validate(config)  # the embedded model needs no files
    assert config.model.path == "embedded" and config.rollout.max_new_tokens == 48
    assert [(s.name, s.algorithm) for s in config.stages] == [
        ("warmup", "sft"),
        (algorithm, algorithm),
        ("grpo", "grpo"),
    ]
    stage1, grpo = config.stage(algorithm), config.stage("grpo")
    assert stage1.group == GroupConfig(expert=1, teacher=0, self=0)
    assert grpo.group == GroupConfig(expert=0, teacher=0, self=8)


BUDGET = (
    "steps",
    "prompts_per_step",
    "lr",
    "group",
    "warmup_steps",
    "max_grad_norm",
    "updates_per_batch",
    "eval_every",
)


@pytest.mark.skipif(not DEFAULT_RECIPE.exists(), reason="recipes/default.yaml is not written yet")
@pytest.mark.parametrize("algorithm", ["sft", "dft"])
def test_baselines_keep_the_default_recipes_budget(algorithm):
    """Side-by-side comparisons only mean something if nothing but stage 1's algorithm differs."""
    default, baseline = _recipe(DEFAULT_RECIPE), _recipe(BASELINES / f"{algorithm}_then_grpo.yaml")
    for section in ("seed", "model", "embedded", "data", "rollout", "teacher", "eval"):
        assert getattr(baseline, section) == getattr(default, section), section

    def budget(stage, fields=BUDGET):
        return {f: getattr(stage, f) for f in fields}

    d_stages = [s for s in default.stages if s.algorithm != "eval"]
    b_stages = [s for s in baseline.stages if s.algorithm != "eval"]
    assert [s.name for s in b_stages[:1]] == [s.name for s in d_stages[:1]]  # the warm-up
    assert len(b_stages) == len(d_stages)
    for d, b in zip(d_stages, b_stages):
        fields = BUDGET if b.algorithm != algorithm else tuple(f for f in BUDGET if f != "group")
        assert budget(b, fields) == budget(d, fields), (b.name, d.name)
        if b.algorithm == "grpo":
            assert (b.clip_ratio, b.kl_coef) == (d.clip_ratio, d.kl_coef)


def test_learning_rate_schedules():
    from pipeline.recipe.config import StageConfig, learning_rate

    constant = StageConfig(name="s", algorithm="sft", steps=10, lr=1.0, warmup_steps=4)
    assert [learning_rate(constant, s) for s in (1, 2, 4, 10)] == [0.25, 0.5, 1.0, 1.0]
    cosine = StageConfig(name="s", algorithm="sft", steps=11, lr=2.0, lr_schedule="cosine")
    assert learning_rate(cosine, 1) == pytest.approx(2.0)
    assert learning_rate(cosine, 6) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))
    assert learning_rate(cosine, 11) == pytest.approx(0.2)


def test_embedded_task_checks_surface_as_config_errors():
    from pipeline.recipe.config import load_recipe

    with pytest.raises(ConfigError, match="embedded.task: .*min_terms must be >= 2"):
        load_recipe(None, ["embedded.task.min_terms=1"])
    config = load_recipe(None, ["embedded.task.max_operand=5", "embedded.model.hidden_size=64"])
    assert config.embedded.task.max_operand == 5 and config.embedded.model.hidden_size == 64


def test_sampling_ahead_of_grpo_needs_the_policys_own_distribution():
    """GRPO's weights on stale rows divide the policy's probability by the sampler's, which is the
    policy's only at temperature 1 and top-p 1; at 0 nothing is weighed."""
    with pytest.raises(ConfigError, match="rollout.max_staleness: stage grpo weighs stale rows .*now 0.7 and 1"):
        load_recipe(None, ["rollout.max_staleness=1", "rollout.temperature=0.7"])
    assert load_recipe(None, ["rollout.max_staleness=0", "rollout.temperature=0.7"]).rollout.temperature == 0.7
    assert load_recipe(None, ["rollout.max_staleness=1"]).rollout.max_staleness == 1


def test_sampling_ahead_on_gpus_shared_with_the_learner_is_refused():
    """Colocated roles take turns on one GPU; sampling ahead would run them at once."""
    on_gpus = ["rollout.max_staleness=1", "learner.num_gpus=1", "rollout.num_gpus=1"]
    with pytest.raises(ConfigError, match="rollout.max_staleness: .*ray.colocate=false"):
        load_recipe(None, on_gpus)
    assert load_recipe(None, [*on_gpus, "ray.colocate=false"]).rollout.max_staleness == 1
    assert load_recipe(None, ["rollout.max_staleness=1", "ray.colocate=true"]).ray.colocate  # CPUs: threads of their own


def test_rollouts_more_than_one_update_ahead_need_a_version_of_the_weights_each():
    """At max_staleness 2 the workers hold rollouts on two versions at once; a collective sync has
    the learner send the one it holds, so it is refused, and the bound is said."""
    with pytest.raises(ConfigError, match="rollout.max_staleness: 2 .*rollout.weight_sync=auto"):
        load_recipe(None, ["rollout.max_staleness=2", "rollout.weight_sync=collective"])
    assert load_recipe(None, ["rollout.max_staleness=2", "rollout.weight_sync=shared_memory"]).rollout.max_staleness == 2
    assert load_recipe(None, ["rollout.max_staleness=1", "rollout.weight_sync=collective"]).rollout.max_staleness == 1
    with pytest.raises(ConfigError, match="rollout.max_staleness.*16"):
        load_recipe(None, ["rollout.max_staleness=17"])
