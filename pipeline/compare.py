"""``gft compare``: from which initialisation does RL gain most? (the GFT paper's Fig. 4, Table 1)

A recipe whose stages end in ``<stage 1>, grpo`` defines the experiment. The stages before stage 1
make the shared *base* (the embedded default's SFT warm-up), run once. Each pipeline then runs
its own stage 1 from that base (SFT, DFT, GFT, ... with stage 1's budget, or none) followed by
the recipe's GRPO stage, once per seed. All runs share the eval sets and the GRPO budget.

Every run is cached under a hash of its full config: a run folder holding ``eval.json`` is
finished (``run`` writes it last), so calling again reuses it and trains nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from pipeline.config import EMBEDDED, GroupConfig, RunConfig, StageConfig, validate, validate_stages
from pipeline.configio import ConfigError, to_dict

CACHE_VERSION = 1  # bump when a code change makes cached runs incomparable


def _stage_one(algorithm: str, group: Callable[[StageConfig], GroupConfig], **settings):
    def make(template: StageConfig) -> StageConfig:
        return replace(template, algorithm=algorithm, group=group(template), **settings)

    return make


def _recipe_group(template: StageConfig) -> GroupConfig:
    return template.group if template.algorithm == "gft" else GroupConfig()


# pipeline name -> its stage 1 made from the recipe's stage 1 (same steps, prompts, lr), or None
PIPELINES: dict[str, Callable[[StageConfig], StageConfig] | None] = {
    "grpo": None,  # GRPO straight from the base
    "sft": _stage_one("sft", lambda t: GroupConfig(expert=1, teacher=0, self=0)),
    "dft": _stage_one("dft", lambda t: GroupConfig(expert=1, teacher=0, self=0)),
    "gft": _stage_one("gft", _recipe_group),
    "sft_mix": _stage_one("sft", lambda t: GroupConfig(expert=1, teacher=_recipe_group(t).teacher, self=0)),
    "gft_nomix": _stage_one("gft", lambda t: GroupConfig(expert=1, teacher=0, self=_recipe_group(t).self)),
    # departures from the paper, to test what drives GFT's entropy (docs/results.md): DCR on the
    # off-policy rows only (self rows keep c = 1), and rewards normalised within each source
    "gft_dcr_offpolicy": _stage_one("gft", _recipe_group, dcr_sources=["expert", "teacher"]),
    "gft_source_norm": _stage_one("gft", _recipe_group, advantage_groups="prompt_and_source"),
}
DEFAULT_PIPELINES = ("grpo", "sft", "dft", "gft")


@dataclass
class Experiment:
    """The runs of one comparison: the base, then every (pipeline, seed)."""

    base: RunConfig | None  # None: the recipe's model is the base as it is
    runs: dict[tuple[str, int], RunConfig] = field(default_factory=dict)


def config_hash(config: RunConfig) -> str:
    """What the run computes: the config without where it is written or what it is called."""
    tree = to_dict(config)
    for where_and_what in ("output_dir", "name"):
        del tree[where_and_what]
    payload = json.dumps({"cache_version": CACHE_VERSION, "config": tree}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def run_folder(cache: Path, config: RunConfig) -> Path:
    return cache / f"{config.name}-{config_hash(config)}"


def is_finished(folder: Path) -> bool:
    return (folder / "eval.json").is_file()


def _split_recipe(recipe: RunConfig) -> tuple[list[StageConfig], StageConfig, StageConfig]:
    stages = [s for s in recipe.stages if s.algorithm != "eval"]
    if len(stages) < 2 or stages[-1].algorithm != "grpo" or stages[-2].algorithm not in ("sft", "dft", "gft"):
        raise ConfigError(
            "stages: gft compare needs a recipe whose training stages end in a stage 1 (sft, dft or gft) "
            f"and then grpo; got {[s.algorithm for s in stages]}"
        )
    return stages[:-2], stages[-2], stages[-1]


def _with_inputs(recipe: RunConfig, model_path: str, train: list[str], evals: dict[str, str]) -> RunConfig:
    config = deepcopy(recipe)
    config.model.path = model_path
    config.data.train_files, config.data.eval_files = list(train), dict(evals)
    return config


def plan(recipe: RunConfig, pipelines: list[str], seeds: list[int], eval_every: int, cache: Path) -> Experiment:
    """The configs of every run. Builds the embedded task (cheap, deterministic) when the recipe
    uses it, so that every run names its model and data by path."""
    unknown = [p for p in pipelines if p not in PIPELINES]
    if unknown:
        raise ConfigError(f"--pipelines: unknown {', '.join(unknown)}; known: {', '.join(PIPELINES)}")
    base_stages, stage_one, grpo = _split_recipe(recipe)
    model, train, evals = recipe.model.path, recipe.data.train_files, recipe.data.eval_files
    if model == EMBEDDED:
        from pipeline.embedded import build_embedded_assets

        e = recipe.embedded
        assets = build_embedded_assets(cache / "embedded", e.task, e.model, n_train=e.n_train, n_test=e.n_test,
                                       n_ood=e.n_ood, n_teacher=e.n_teacher)
        model, train = str(assets.base_model), train or [str(assets.train)]
        evals = evals or {"test": str(assets.test), "ood": str(assets.ood)}

    experiment = Experiment(base=None)
    if base_stages:
        base = _with_inputs(recipe, model, train, evals)
        base.name, base.stages = "base", base_stages
        experiment.base = base
        model = str(run_folder(cache, base) / "checkpoints" / base_stages[-1].name)
    for name in pipelines:
        for seed in seeds:
            config = _with_inputs(recipe, model, train, evals)
            config.name, config.seed = f"{name}-seed{seed}", seed
            make_stage_one = PIPELINES[name]
            stages = [] if make_stage_one is None else [replace(make_stage_one(stage_one), name="stage1")]
            # fixed stage names: the report reads "stage1" and "grpo" whatever the recipe calls them
            config.stages = [replace(s, eval_every=eval_every) for s in [*stages, replace(grpo, name="grpo")]]
            experiment.runs[(name, seed)] = config
    if experiment.base is not None:
        validate(experiment.base)
    for config in experiment.runs.values():  # their model, the base checkpoint, may not exist yet
        validate_stages(config)
    return experiment


def execute(experiment: Experiment, cache: Path, run: Callable[..., object]) -> dict[tuple[str, int], Path]:
    """Run what the cache lacks, base first, with one progress bar (and ETA) over all their steps.
    ``run`` is ``pipeline.run.run`` (a parameter so tests can count the calls)."""
    configs = ([experiment.base] if experiment.base else []) + list(experiment.runs.values())
    pending = [c for c in configs if not is_finished(run_folder(cache, c))]
    total = sum(s.steps for c in pending for s in c.stages if s.algorithm != "eval")
    with tqdm(total=total, unit="step", desc="gft compare", dynamic_ncols=True) as bar:
        for config in pending:
            folder = run_folder(cache, config)
            bar.set_postfix_str(config.name)
            # an attempt that was interrupted goes on from its last resume point
            run(config, run_dir=folder, on_step=lambda: bar.update(1), resume=folder.exists())
    return {key: run_folder(cache, config) for key, config in experiment.runs.items()}
