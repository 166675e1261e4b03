"""``gft compare``: from which initialisation does RL gain most? (the GFT paper's Fig. 4, Table 1)

A recipe whose stages end in ``<stage 1>, grpo`` defines the experiment. The stages before stage 1
make the shared *base* (the embedded default's SFT warm-up), run once. Each pipeline then runs
its own stage 1 from that base (SFT, DFT, GFT, ... with stage 1's budget, or none) followed by
the recipe's GRPO stage, once per seed; or, for CHORD, one stage of both budgets that mixes SFT
into GRPO. All runs share the eval sets and the step budget.

Every run is cached under a hash of its full config and of the code that computes it: a run
folder holding ``eval.json`` is finished (``run`` writes it last), so calling again with the same
code reuses it and trains nothing.

A fair comparison gives each method its own learning rate, chosen for what the experiment asks
about, the end of RL (:func:`choose_lrs`): a ``val`` split that shares no problem with any
training file is made (:func:`shared_inputs`: the embedded task holds whole problems out of
train and test alike, user data distinct prompts); each method's whole pipeline, stage 1 then
GRPO, runs at every rate of a grid for sweep seeds apart from the evaluation seeds, the grid is
extended while its best rate lies at an edge, and the smallest rate within one standard error of
the best ``val`` score is the one its runs use.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.core.errors import ConfigError
from pipeline.core.files import atomic_path
from pipeline.recipe.config import EMBEDDED, GroupConfig, RunConfig, StageConfig, validate, validate_stages
from pipeline.recipe.configio import to_dict
from pipeline.tools.report import share_name

CACHE_VERSION = 1  # bump when a code change makes cached runs incomparable
VAL_SPLIT = "val"
VAL_FRACTION = 0.1  # of the embedded task's problems, held out for val where its recipe holds none out
COMPUTING_LIBRARIES = ("torch", "transformers", "numpy", "pyarrow")
ROOT = Path(__file__).resolve().parents[2]  # the project, holding pipeline/ and workers/
SWEEP_FIRST_SEED = 1000  # the sweep's seeds start here, apart from any evaluation seed
EXTENSION_FACTOR = 4.0  # a rate added beyond an edge of the grid: this far past it
LR_LIMITS = (1e-8, 1e-1)  # no rate is tried outside these


@dataclass(frozen=True)
class Pipeline:
    """One way from the base to the end of RL: its stages, made from the recipe's stage 1 and GRPO
    stage (:func:`_split_recipe`), the last named ``grpo`` (the RL stage the report reads, CHORD's
    one stage included) and any before it ``stage1``. ``tuned``: its first stage's learning rate
    is the method's own, chosen by the sweep; grpo alone runs the recipe's GRPO stage as it is.
    ``stage_one``: it has a stage 1 before GRPO (what ``--data-fractions`` puts on a share)."""

    stages: Callable[[StageConfig, StageConfig], list[StageConfig]]
    tuned: bool = True
    stage_one: bool = False


def _then_grpo(algorithm: str, group: Callable[[StageConfig], GroupConfig], **settings) -> Pipeline:
    def stages(stage_one: StageConfig, grpo: StageConfig) -> list[StageConfig]:
        return [replace(stage_one, name="stage1", algorithm=algorithm, group=group(stage_one), **settings),
                replace(grpo, name="grpo")]

    return Pipeline(stages, stage_one=True)


def _chord(**settings) -> Pipeline:
    """CHORD in place of stage 1 and GRPO: one stage of both their steps, the GRPO stage's prompts
    and samples a step with the expert's row of each prompt beside them."""
    def stages(stage_one: StageConfig, grpo: StageConfig) -> list[StageConfig]:
        return [replace(grpo, name="grpo", algorithm="chord", steps=stage_one.steps + grpo.steps,
                        group=GroupConfig(expert=1, teacher=0, self=grpo.group.self), **settings)]

    return Pipeline(stages)


def _recipe_group(template: StageConfig) -> GroupConfig:
    return template.group if template.algorithm == "gft" else GroupConfig()


PIPELINES: dict[str, Pipeline] = {
    "grpo": Pipeline(lambda stage_one, grpo: [replace(grpo, name="grpo")], tuned=False),  # from the base
    "sft": _then_grpo("sft", lambda t: GroupConfig(expert=1, teacher=0, self=0)),
    "dft": _then_grpo("dft", lambda t: GroupConfig(expert=1, teacher=0, self=0)),
    "gft": _then_grpo("gft", _recipe_group),
    "sft_mix": _then_grpo("sft", lambda t: GroupConfig(expert=1, teacher=_recipe_group(t).teacher, self=0)),
    "gft_nomix": _then_grpo("gft", lambda t: GroupConfig(expert=1, teacher=0, self=_recipe_group(t).self)),
    # departures from the paper, to test what drives GFT's entropy (docs/results.md): DCR on the
    # off-policy rows only (self rows keep c = 1), and rewards normalised within each source
    "gft_dcr_offpolicy": _then_grpo("gft", _recipe_group, dcr_sources=["expert", "teacher"]),
    "gft_source_norm": _then_grpo("gft", _recipe_group, advantage_groups="prompt_and_source"),
    # the paper's strongest hybrid baseline (its Table 1), each with its authors' example settings:
    # CHORD-mu (mu from 0.9 down to 0.05 along a cosine) and CHORD-phi (mu 0.1, tokens weighted p (1 - p))
    "chord": _chord(sft_token_weight="uniform", mu_peak=0.9, mu_valley=0.05, mu_warmup_steps=0, mu_decay_steps=None),
    "chord_phi": _chord(sft_token_weight="phi", mu_peak=0.1, mu_valley=0.1, mu_warmup_steps=0, mu_decay_steps=0),
}
DEFAULT_PIPELINES = ("grpo", "sft", "dft", "gft")
STAGE_ONE_PIPELINES = tuple(name for name, pipeline in PIPELINES.items() if pipeline.stage_one)


@dataclass
class Experiment:
    """The runs of one comparison: the base, then every (pipeline, seed); or, for a learning-rate
    sweep, every (pipeline, lr)."""

    base: RunConfig | None  # None: the recipe's model is the base as it is
    runs: dict[tuple[str, int | float], RunConfig] = field(default_factory=dict)


@dataclass
class Inputs:
    """The model, training files and eval files every run of a comparison shares."""

    model: str
    train: list[str]
    evals: dict[str, str]
    val: str | None = None  # prompts held out of ``train`` to choose learning rates on
    # the embedded retain family's training rows, mixed into the base's stages it names
    # (embedded.retain_stages); its held-out problems are the eval set ``retain``
    retain_train: str | None = None


@dataclass
class LrChoice:
    """A method's learning rate, and why: at every rate tried, the mean over the sweep seeds of
    ``val`` pass@1 after the GRPO stage and its standard error; ``bracketed``: whether the best
    rate has a rate tried on either side (False: it is at an edge the extensions could not pass)."""

    lr: float
    scores: dict[float, tuple[float, float]]
    bracketed: bool
    seeds: list[int]


@dataclass(frozen=True)
class SweepSettings:
    """How rates are chosen: ``seeds`` sweep seeds per rate (from SWEEP_FIRST_SEED, apart from the
    evaluation seeds), and up to ``extensions`` rates added beyond each edge of the grid, each
    EXTENSION_FACTOR past the last, while the best rate lies at that edge."""

    seeds: int = 2
    extensions: int = 2

    @property
    def seed_list(self) -> list[int]:
        return list(range(SWEEP_FIRST_SEED, SWEEP_FIRST_SEED + self.seeds))


@functools.cache
def code_hash(root: Path = ROOT) -> str:
    """The code that trains and evaluates a run: every module of ``pipeline`` bar the tools that
    plan and report, every module of ``workers`` (in the project at ``root``), and the versions of
    the libraries that compute. A run cached by other code is not reused: its figures may differ
    for that reason alone."""
    digest = hashlib.sha256()
    modules = sorted([*(root / "pipeline").rglob("*.py"), *(root / "workers").rglob("*.py")])
    for path in modules:
        relative = path.relative_to(root).as_posix()
        if relative.startswith("pipeline/tools/") or relative == "pipeline/cli.py":
            continue
        digest.update(f"{relative}\0".encode() + path.read_bytes() + b"\0")
    for library in COMPUTING_LIBRARIES:
        digest.update(f"{library}=={importlib.metadata.version(library)}\0".encode())
    return digest.hexdigest()[:12]


def config_hash(config: RunConfig) -> str:
    """What the run computes: the config without where it is written or what it is called, and
    the code that computes it (:func:`code_hash`)."""
    tree = to_dict(config)
    for where_and_what in ("output_dir", "name"):
        del tree[where_and_what]
    payload = json.dumps({"cache_version": CACHE_VERSION, "code": code_hash(), "config": tree}, sort_keys=True)
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


def prompt_text(prompt) -> str:
    """A prompt as compared across files: its messages' roles and contents, case and runs of
    whitespace aside (the same problem pasted twice is the same prompt)."""
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
    return "\n".join(f"{m.get('role', '')}: {' '.join(str(m.get('content', '')).split()).lower()}" for m in messages)


def hold_out(train_files: list[str], count: int, folder: Path) -> tuple[str, str]:
    """The training files' rows as two parquet files in ``folder``: ``count`` distinct prompts
    (by :func:`prompt_text`) drawn at random (a fixed seed), one row each, held out as the
    validation split, and every row of the other prompts to train on: a prompt the data repeats
    lies wholly on one side."""
    table = pa.concat_tables([pq.read_table(path) for path in train_files], promote_options="default")
    texts = [prompt_text(prompt) for prompt in table.column("prompt").to_pylist()]
    distinct = list(dict.fromkeys(texts))
    if not 0 < count < len(distinct):
        raise ConfigError(f"--val-prompts: {count} prompts held out of {len(distinct)} distinct prompts in "
                          f"{', '.join(train_files)}; some must be left to train on")
    held = {distinct[i] for i in np.random.default_rng(0).choice(len(distinct), count, replace=False)}
    first = {text: index for index, text in reversed(list(enumerate(texts)))}
    rows = {"train": [text not in held for text in texts], VAL_SPLIT: [first[text] == index and text in held
                                                                       for index, text in enumerate(texts)]}
    for name, keep in rows.items():
        with atomic_path(folder / f"{name}.parquet") as tmp:
            pq.write_table(table.filter(pa.array(keep)), tmp)
    return str(folder / "train.parquet"), str(folder / f"{VAL_SPLIT}.parquet")


def check_val_unseen(val: str, train_files: list[str]) -> None:
    """Refuse a ``val`` file any of whose prompts (by :func:`prompt_text`) a training file holds:
    a rate chosen on it would be chosen on recall."""
    seen = {}
    for path in train_files:
        for index, prompt in enumerate(pq.read_table(path, columns=["prompt"]).column("prompt").to_pylist()):
            seen.setdefault(prompt_text(prompt), (path, index))
    for index, prompt in enumerate(pq.read_table(val, columns=["prompt"]).column("prompt").to_pylist()):
        if prompt_text(prompt) in seen:
            path, row = seen[prompt_text(prompt)]
            raise ConfigError(f"{val}: row {index}: field prompt: also in the training file {path} (row {row}); "
                              "a validation prompt must be one that no run trains on")


def shared_inputs(recipe: RunConfig, cache: Path, val_prompts: int = 0) -> Inputs:
    """The model and data of every run: the recipe's, or the embedded task built into ``cache``
    (cheap, deterministic), so that every run names them by path. With ``val_prompts``, a ``val``
    split no run trains on: the recipe's eval set of that name, else the embedded task's problems
    held out of train and test alike (:data:`VAL_FRACTION` of them unless its task says), else
    that many distinct prompts held out of the training files."""
    model, train, evals = recipe.model.path, recipe.data.train_files, dict(recipe.data.eval_files)
    retain_train = None
    val = evals.pop(VAL_SPLIT, None) if val_prompts else None
    if model == EMBEDDED:
        from pipeline.embedded import build_embedded_assets

        e, task, n_val = recipe.embedded, recipe.embedded.task, 0
        if val_prompts and not val and not train:
            task = e.task if e.task.val_fraction else replace(e.task, val_fraction=VAL_FRACTION)
            n_val = val_prompts
        # one folder per kind of assets: the retain family changes the tokenizer and so the base
        folder = cache / "-".join(["embedded", *([f"val{n_val}"] if n_val else []),
                                   *([f"retain{e.n_retain_train}"] if e.n_retain_train else [])])
        assets = build_embedded_assets(folder, task, e.model, n_train=e.n_train, n_test=e.n_test,
                                       n_ood=e.n_ood, n_teacher=e.n_teacher, n_val=n_val,
                                       n_retain_train=e.n_retain_train)
        model, train = str(assets.base_model), train or [str(assets.train)]
        retain = {"retain": str(assets.retain)} if assets.retain else {}
        evals = evals or {"test": str(assets.test), "ood": str(assets.ood), **retain}
        val = val or (str(assets.val) if assets.val else None)
        retain_train = str(assets.retain_train) if assets.retain_train else None
    if val_prompts and not val:
        kept, val = hold_out(list(train), val_prompts, cache / f"holdout-{val_prompts}")
        train = [kept]
    if val:  # every file a stage trains on: the run's, and any a stage has of its own
        check_val_unseen(val, [*train, *(path for s in recipe.stages if s.train_files for path in s.train_files)])
    return Inputs(model, list(train), dict(evals), val, retain_train)


def _base(recipe: RunConfig, inputs: Inputs, cache: Path) -> tuple[RunConfig | None, str]:
    """The base run (the recipe's stages before stage 1), if any, and the model stage 1 starts from."""
    base_stages, _, _ = _split_recipe(recipe)
    if not base_stages:
        return None, inputs.model
    base = _with_inputs(recipe, inputs.model, inputs.train, inputs.evals)
    mixed = set(recipe.embedded.retain_stages) if inputs.retain_train else set()
    base.name, base.stages = "base", [replace(s, train_files=[*inputs.train, inputs.retain_train]) if s.name in mixed
                                      else s for s in base_stages]
    validate(base)
    return base, str(run_folder(cache, base) / "checkpoints" / base_stages[-1].name)


def _check_pipelines(pipelines: list[str]) -> None:
    unknown = [p for p in pipelines if p not in PIPELINES]
    if unknown:
        raise ConfigError(f"--pipelines: unknown {', '.join(unknown)}; known: {', '.join(PIPELINES)}")


def seeds_per_pipeline(text: str, first_seed: int, count: int) -> dict[str, list[int]]:
    """``--pipelines`` read as pipeline -> its seeds: ``grpo,sft:13`` gives grpo ``count`` seeds
    and sft 13, each from ``first_seed`` (the same seeds, so differences pair up by seed)."""
    if count < 1:
        raise ConfigError(f"--seeds: {count} seeds per pipeline; give 1 or more")
    seeds = {}
    for item in text.split(","):
        name, _, wanted = item.strip().partition(":")
        if wanted and not (wanted.isdigit() and int(wanted) > 0):
            raise ConfigError(f"--pipelines: {item!r}: the seed count after ':' must be a positive integer")
        seeds[name] = list(range(first_seed, first_seed + (int(wanted) if wanted else count)))
    _check_pipelines(list(seeds))
    return seeds


def plan(recipe: RunConfig, seeds: dict[str, list[int]], eval_every: int, cache: Path,
         inputs: Inputs | None = None, lrs: dict[str, float] | None = None,
         fractions: tuple[float, ...] = ()) -> Experiment:
    """The configs of every run (pipeline -> its seeds in ``seeds``), from ``inputs`` (default:
    :func:`shared_inputs`), stage 1 of each pipeline at its rate in ``lrs`` (default: the recipe's).
    With ``fractions`` (each below 1), every pipeline that has a stage 1 runs again with its stage 1
    on that share of the prompts (``data_fraction``: the same steps, fewer prompts repeated), named
    by :func:`~pipeline.tools.report.share_name`. Runs are ordered seed by seed, so an experiment
    cut short leaves pairs to compare."""
    _check_pipelines(list(seeds))
    _, stage_one, grpo = _split_recipe(recipe)
    inputs = inputs or shared_inputs(recipe, cache)
    base, model = _base(recipe, inputs, cache)
    experiment = Experiment(base=base)
    for seed in sorted({s for wanted in seeds.values() for s in wanted}):
        for name in (n for n, wanted in seeds.items() if seed in wanted):
            config = _with_inputs(recipe, model, inputs.train, inputs.evals)
            config.name, config.seed = f"{name}-seed{seed}", seed
            stages = PIPELINES[name].stages(stage_one, grpo)
            if PIPELINES[name].tuned and lrs:
                stages[0] = replace(stages[0], lr=lrs[name])
            config.stages = [replace(s, eval_every=eval_every) for s in stages]
            experiment.runs[(name, seed)] = config
            for fraction in fractions if PIPELINES[name].stage_one else ():
                on_share = deepcopy(config)
                on_share.name = f"{name}-data{fraction:g}-seed{seed}"
                on_share.stages[0] = replace(on_share.stages[0], data_fraction=fraction)
                experiment.runs[(share_name(name, fraction), seed)] = on_share
    for config in experiment.runs.values():  # their model, the base checkpoint, may not exist yet
        validate_stages(config)
    return experiment


def plan_sweep(recipe: RunConfig, grids: dict[str, list[float]], seeds: list[int], cache: Path,
               inputs: Inputs) -> Experiment:
    """Every tuned pipeline of ``grids`` at each of its rates (its first stage's), for each of
    ``seeds``: its whole pipeline, as the main runs do, evaluated on the ``val`` split only."""
    _check_pipelines(list(grids))
    if inputs.val is None:
        raise ConfigError("a learning-rate sweep needs a val split (--val-prompts)")
    _, stage_one, grpo = _split_recipe(recipe)
    base, model = _base(recipe, inputs, cache)
    experiment = Experiment(base=base)
    for name, lrs in grids.items():
        if not PIPELINES[name].tuned:
            continue
        for lr in lrs:
            for seed in seeds:
                config = _with_inputs(recipe, model, inputs.train, {VAL_SPLIT: inputs.val})
                config.name, config.seed = f"sweep-{name}-lr{lr:g}-seed{seed}", seed
                config.eval.splits = [VAL_SPLIT]
                stages = PIPELINES[name].stages(stage_one, grpo)
                config.stages = [replace(s, eval_every=0, lr=lr if i == 0 else s.lr) for i, s in enumerate(stages)]
                validate_stages(config)
                experiment.runs[(name, lr, seed)] = config
    return experiment


def sweep_scores(sweep: Experiment, cache: Path) -> dict[str, dict[float, tuple[float, float]]]:
    """Per pipeline, per rate: the mean over the sweep's seeds of ``val`` pass@1 after GRPO (the
    primary metric; greedy accuracy where no samples were drawn), and its standard error."""
    values: dict[str, dict[float, list[float]]] = {}
    for (name, lr, _), config in sweep.runs.items():
        metrics = json.loads((run_folder(cache, config) / "eval.json").read_text())["evals"]["grpo"][VAL_SPLIT]
        values.setdefault(name, {}).setdefault(lr, []).append(metrics.get("pass@1", metrics["accuracy"]))
    return {name: {lr: (float(np.mean(v)), float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0)
                   for lr, v in sorted(rates.items())} for name, rates in values.items()}


def best_rate(scores: dict[float, tuple[float, float]]) -> float:
    """The rate with the highest mean score."""
    return max(sorted(scores), key=lambda lr: scores[lr][0])


def choose_rate(scores: dict[float, tuple[float, float]]) -> float:
    """The tie rule: the smallest rate whose mean lies within one standard error of the best's."""
    best_mean, best_error = scores[best_rate(scores)]
    return min(lr for lr, (mean, _) in scores.items() if mean >= best_mean - best_error)


def extend_grid(grid: list[float], best: float, added: dict[str, int], limit: int) -> float | None:
    """The rate to add where ``best`` is at an edge of ``grid`` and that side has had fewer than
    ``limit`` additions (counted in ``added``), within LR_LIMITS; None where none is."""
    for side, edge, rate in (("low", min(grid), min(grid) / EXTENSION_FACTOR),
                             ("high", max(grid), max(grid) * EXTENSION_FACTOR)):
        if best == edge and added[side] < limit and LR_LIMITS[0] <= rate <= LR_LIMITS[1]:
            added[side] += 1
            return rate
    return None


def choose_lrs(recipe: RunConfig, pipelines: list[str], lrs: list[float], settings: SweepSettings, cache: Path,
               inputs: Inputs, run: Callable[..., object]) -> dict[str, LrChoice]:
    """Each method's rate, chosen for the end of RL: the sweep run over ``lrs`` (extended while the
    best is at an edge, :class:`SweepSettings`), scored by :func:`sweep_scores`, then the tie rule."""
    grids = {name: sorted(lrs) for name in pipelines if PIPELINES[name].tuned}
    added = {name: {"low": 0, "high": 0} for name in grids}
    while True:
        sweep = plan_sweep(recipe, grids, settings.seed_list, cache, inputs)
        execute(sweep, cache, run)
        scores = sweep_scores(sweep, cache)
        extended = {name: extend_grid(grids[name], best_rate(scores[name]), added[name], settings.extensions)
                    for name in grids}
        if not any(extended.values()):
            break
        for name, rate in extended.items():
            if rate is not None:
                grids[name] = sorted([*grids[name], rate])
    return {name: LrChoice(choose_rate(scores[name]), scores[name],
                           min(grids[name]) < best_rate(scores[name]) < max(grids[name]), settings.seed_list)
            for name in grids}


def execute(experiment: Experiment, cache: Path, run: Callable[..., object]) -> dict[tuple[str, int], Path]:
    """Run what the cache lacks, base first, with one progress bar (and ETA) over all their steps.
    ``run`` is ``pipeline.driver.run.run`` (a parameter so tests can count the calls)."""
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
