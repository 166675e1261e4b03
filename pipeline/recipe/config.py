"""The recipe: typed configs for a run, loaded from YAML with dotted ``key=value`` overrides.

A recipe names a base model, data, the roles' settings and a list of stages that run in order,
each starting from the previous stage's checkpoint. ``validate`` runs before any work starts.
"""

from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.batch import OFF_POLICY_SOURCES, SOURCES
from pipeline.core.data import BAD_ROWS, DATA_SOURCE, PromptRecord, short_prompts
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.metric_sinks import BACKENDS, WANDB_MODES
from pipeline.embedded import TaskConfig, TinyModelConfig
from pipeline.eval.benchmarks import BENCHMARKS
from pipeline.recipe.algorithms import ALGORITHMS
from pipeline.recipe.configio import apply_override, bounded, build, check_bounds, read_yaml
from pipeline.rewards.verifiers import DEFAULT_EXTRACTION, EXTRACTIONS

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
DEFAULT_RECIPE = RECIPES_DIR / "default.yaml"
STAGE_KINDS = (*ALGORITHMS, "eval")  # an eval stage trains nothing: it evaluates the policy so far
ADVANTAGE_GROUPS = ("prompt", "prompt_and_source")
SFT_TOKEN_WEIGHTS = ("uniform", "phi")  # chord's expert tokens: CHORD-mu, CHORD-phi
EMBEDDED = "embedded"
SHORT_GROUPS = ("refuse", "allow")
PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt")  # torch.load would run code a file carries
# Upper bounds far above any real recipe, below what would exhaust a node before the run could
# say so (a million actors, a group of a billion rows)
MAX_ACTORS, MAX_CPUS, MAX_GPUS = 4096, 2**16, 2**12
MAX_GROUP = 4096  # rows of one prompt's group, samples per eval prompt, updates per batch
MAX_TOKENS = 2**20
MAX_STALENESS = 16  # rollouts in flight at once, each with a version of the weights of its own
# A role's ``resources`` are custom Ray resources, which only the nodes started with them have
# (`ray start --resources '{"learner_node": 4}'`): asking for them places the role on those nodes
# (verl's resource pools by node). Ray's own CPU, GPU and memory are asked by num_cpus and num_gpus.
RAY_OWN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a run's or a stage's name names folders


@dataclass
class EmbeddedConfig:
    """The embedded task and tiny model, used when ``model.path`` is ``embedded``. Their seeds
    are their own, so runs with different ``seed`` share one task and one base model."""

    task: TaskConfig = field(default_factory=TaskConfig)
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    n_train: int = bounded(4096, low=1, high=10**7)
    n_test: int = bounded(256, low=1, high=10**6)
    n_ood: int = bounded(256, low=1, high=10**6)
    n_teacher: int = bounded(3, low=0, high=64)
    # forgetting: rows of a second task family (the largest of a few numbers) mixed into the
    # prompts of retain_stages (the warm-up), a skill the base then has and the later stages do
    # not train; the `retain` eval split (n_test of its held-out problems) measures what they keep
    n_retain_train: int = bounded(0, low=0, high=10**7)
    retain_stages: list[str] = field(default_factory=lambda: ["warmup"])


@dataclass
class ModelConfig:
    path: str = EMBEDDED  # a local Hugging Face folder, or "embedded" to build the tiny model
    dtype: str = "auto"  # auto (bfloat16 on a GPU, float32 on CPU) | float32 | bfloat16


@dataclass
class LearnerConfig:
    """The learner role: ``num_workers`` data-parallel actors joined by torch.distributed (gloo
    on CPU, nccl on GPU), each asking Ray for these resources. ``fsdp``: shard the weights,
    gradients and optimizer state across them (torch's ``fully_shard``), for a model whose
    training state does not fit one device; otherwise each holds a whole replica."""

    num_workers: int = bounded(1, low=1, high=MAX_ACTORS)
    num_cpus: float = bounded(1.0, low=0, high=MAX_CPUS)
    num_gpus: float = bounded(0.0, low=0, high=MAX_GPUS)
    # torch threads per learner; None: ray.num_cpus (else the machine's cores) over the learners
    num_threads: int | None = bounded(None, low=1, high=MAX_CPUS)
    fsdp: bool = False
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources: see RAY_OWN_RESOURCES
    # keep each decoder layer's input only and recompute its activations in the backward: about
    # one more forward's compute for activation memory that no longer grows with the layers
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    """verl-layout parquet files. Empty with the embedded model: the embedded task's files."""

    train_files: list[str] = field(default_factory=list)
    eval_files: dict[str, str] = field(default_factory=dict)  # split name -> parquet
    max_prompt_length: int = bounded(512, low=1, high=MAX_TOKENS)
    bad_rows: str = "error"  # error: refuse a file with a bad row | skip: leave bad rows out, and report them
    # the column whose value the reward function receives as data_source (verl's option; the GFT
    # authors' files use "source")
    reward_fn_key: str = DATA_SOURCE
    # prompts with fewer expert or teacher candidates than a stage's group asks for: refuse the
    # run | allow (each step logs its short groups per source, and the run's summary counts them)
    short_groups: str = "refuse"


@dataclass
class RolloutConfig:
    """The rollout workers. ``vllm`` runs in an environment of its own (vLLM pins a torch and a
    transformers that the learner's verl refuses): ``python`` is its interpreter, which must be
    at that path on every node; None: ``.venv-vllm`` beside the checkout (``make vllm``)."""

    backend: str = "hf"  # hf | vllm
    python: str | None = None  # the workers' interpreter; None: the driver's (hf), .venv-vllm's (vllm)
    num_workers: int = bounded(1, low=1, high=MAX_ACTORS)
    temperature: float = bounded(1.0, above=0)
    top_p: float = bounded(1.0, above=0, high=1)
    max_new_tokens: int = bounded(64, low=1, high=MAX_TOKENS)
    max_num_seqs: int = bounded(256, low=1, high=2**16)  # sequences decoded at once (prompts x n), bounds memory
    num_cpus: float = bounded(1.0, low=0, high=MAX_CPUS)  # per worker
    num_gpus: float = bounded(0.0, low=0, high=MAX_GPUS)
    # torch threads per worker; None: ray.num_cpus (else the machine's cores) over the workers
    num_threads: int | None = bounded(None, low=1, high=MAX_CPUS)
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources: see RAY_OWN_RESOURCES
    gpu_memory_utilization: float = bounded(0.5, above=0, high=1)  # vllm on a GPU: its share of the GPU's memory
    # vllm: KV cache size; None: 1 GiB on CPU, what fits on a GPU
    kv_cache_gib: float | None = bounded(None, above=0, high=2**14)
    # how the learner's weights reach the workers after each update: shared_memory (the
    # learner's node's /dev/shm, else Ray's object store) | collective (broadcast through a
    # process group joining learner rank 0 and the workers: gloo on CPU, nccl on GPU, in the
    # compute dtype, in buckets of weight_bucket_mb) | auto: shared_memory when every worker is
    # on learner rank 0's node, collective when one is not; at max_staleness >= 2 both of
    # shared_memory and auto use the object store
    weight_sync: str = "auto"
    weight_bucket_mb: int = bounded(256, low=1, high=2**20)
    # k >= 1: the rollouts of a stage's next k steps run while this step's update trains, each
    # on the weights of the update before it started, so a row is at most k updates stale (GRPO
    # weighs them by the behaviour ratio: stages.<i>.behaviour_weight_cap); k >= 2 sends the
    # weights through the object store, each rollout holding its own version. 0: sample, score,
    # update, sync, one after the other
    max_staleness: int = bounded(0, low=0, high=MAX_STALENESS)


WEIGHT_SYNCS = ("auto", "shared_memory", "collective")


@dataclass
class TeacherConfig:
    model_path: str | None = None  # sample teacher responses live from this local model
    temperature: float = bounded(1.0, above=0)
    # scoring waits on its reward worker processes, which Ray does not count
    num_cpus: float = bounded(0.0, low=0, high=MAX_CPUS)
    num_gpus: float = bounded(0.0, low=0, high=MAX_GPUS)
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources: see RAY_OWN_RESOURCES


@dataclass
class RewardConfig:
    """How the TeacherWorker scores responses. A call that raises or overruns ``timeout_s``
    scores 0 and is counted (``reward_failures``, ``reward_timeouts``); the run goes on."""

    function: str | None = None  # a .py file with verl's compute_score; None: built-in verifiers
    # how the built-in math verifier finds a response's answer: strict (its \boxed{} or ####, else
    # none: scores 0) | lenient (then "the answer is ...", else the last number, as the GFT
    # authors' verifier does; pipeline/rewards/verifiers.py)
    extraction: str = DEFAULT_EXTRACTION
    timeout_s: float = bounded(10.0, above=0, high=86_400)  # per call
    num_workers: int = bounded(1, low=1, high=MAX_ACTORS)  # scoring processes


@dataclass
class GroupConfig:
    """Members of each prompt's group, by source (docs/design.md §2)."""

    expert: int = bounded(1, low=0, high=MAX_GROUP)
    teacher: int = bounded(3, low=0, high=MAX_GROUP)
    self: int = bounded(4, low=0, high=MAX_GROUP)


@dataclass
class EvalConfig:
    splits: list[str] = field(default_factory=lambda: ["test", "ood"])
    max_prompts: int | None = bounded(128, low=1)  # per eval set; None: all of it
    pass_k: int = bounded(4, low=1, high=MAX_GROUP)  # pass@k from k samples at temperature 1
    max_new_tokens: int = bounded(64, low=1, high=MAX_TOKENS)


@dataclass
class StageConfig:
    name: str
    algorithm: str  # sft | dft | gft | grpo | chord | eval
    steps: int = bounded(0, low=0)
    prompts_per_step: int = bounded(16, low=1)
    # the share of the training prompts the stage draws from (distinct prompts, drawn by the run's
    # seed; every record of each): the same steps then repeat fewer prompts more often
    data_fraction: float = bounded(1.0, above=0, high=1)
    # the prompt files (verl layout) this stage draws from, instead of data.train_files (the
    # embedded task's when those are not given): e.g. GFT's data, then RL prompts for GRPO
    train_files: list[str] | None = None
    group: GroupConfig = field(default_factory=GroupConfig)
    lr: float = bounded(1e-6, low=0)
    weight_decay: float = bounded(0.0, low=0)
    warmup_steps: int = bounded(0, low=0)  # linear ramp from 0
    lr_schedule: str = "constant"  # constant | cosine (to 10% of lr at the last step)
    max_grad_norm: float = bounded(1.0, above=0)
    tau: float = bounded(0.1, above=0)  # DCR threshold (gft)
    # gft, departures from the paper for ablations: the sources whose tokens DCR rectifies (others
    # keep c = 1; the paper: all), and the groups rewards are normalised in (prompt: the paper,
    # all of a prompt's rows together; prompt_and_source: each source's rows apart)
    dcr_sources: list[str] = field(default_factory=lambda: ["expert", "teacher", "self"])
    advantage_groups: str = "prompt"
    clip_ratio: float = bounded(0.2, above=0, below=1)  # PPO epsilon (grpo)
    kl_coef: float = bounded(0.0, low=0)  # low-variance KL to the stage's start policy (grpo)
    # grpo on stale rows (rollout.max_staleness >= 1): the cap of each token's pi_prox / pi_behaviour
    # weight (verl's rollout_is_threshold)
    behaviour_weight_cap: float = bounded(2.0, low=1)
    # chord: the SFT term's weight mu, ramped from 0 to mu_peak over mu_warmup_steps, then a cosine
    # from mu_peak down to mu_valley over mu_decay_steps (None: the rest of the stage); the expert
    # tokens' NLL weighted alike (uniform, CHORD-mu) or by sg(p (1 - p)) (phi, CHORD-phi). The
    # defaults are CHORD-mu's in the authors' Trinity-RFT example (examples/mix_chord)
    mu_peak: float = bounded(0.9, low=0, high=1)
    mu_valley: float = bounded(0.05, low=0, high=1)
    mu_warmup_steps: int = bounded(0, low=0)
    mu_decay_steps: int | None = bounded(None, low=0)
    sft_token_weight: str = "uniform"
    # optimizer steps per batch (mini-batches); >1 makes clipping bite
    updates_per_batch: int = bounded(1, low=1, high=MAX_GROUP)
    # learner forward/backward budget per micro-batch (packed, padding-free): bounds activation memory;
    # fewer, larger micro-batches also pay the per-call costs less often (docs/benchmarks.md)
    micro_batch_tokens: int = bounded(4096, low=1)
    eval_every: int = bounded(0, low=0)  # 0: evaluate only after the stage
    # log the KL to the stage's start policy every N steps: it costs a forward of that policy,
    # which runs every step anyway when kl_coef > 0, and holding it (sharded as the policy, in the
    # compute dtype). 0: only then; with kl_coef 0 the learners then hold no copy of it at all
    kl_every: int = bounded(10, low=0)


@dataclass
class RayConfig:
    address: str | None = None  # None: start a local cluster
    # cores of a local cluster, and the torch threads its actors share; None: all
    num_cpus: int | None = bounded(None, low=1, high=MAX_CPUS)
    dashboard: bool = False
    dashboard_host: str = "127.0.0.1"
    # a rollout or teacher actor whose process dies is restarted this many times; the step it
    # was serving is retried on the new one
    max_actor_restarts: int = bounded(3, low=0, high=10**6)
    # after a node holding a rollout or teacher actor is lost, how long the run waits for the
    # cluster to seat it again (the node, or another with its resources, joining), then stops
    # with the resume command; a lost learner stops the run at once (its state is gone)
    node_wait_s: float = bounded(300.0, low=0, high=86_400)
    # rollout workers share the learners' placement-group bundles (and GPUs: the learner and the
    # rollout never compute at once); false gives each rollout worker a bundle of its own
    colocate: bool = True


@dataclass
class CheckpointConfig:
    """Resume checkpoints (``RUN_DIR/checkpoints/resume/step-N``): weights, optimizer, RNG and
    data position, written atomically. One is always written at the end of each stage."""

    every: int = bounded(50, low=0)  # also every N steps within a stage; 0: only at stage ends
    keep_last: int = bounded(2, low=1)  # older ones are deleted; more than 1 survives a torn latest one


@dataclass
class LoggingConfig:
    """Where each step's metrics go (verl's ``trainer.logger``). ``RUN_DIR/metrics.jsonl`` is
    always written: resume points, ``gft compare`` and the reports read it. wandb and mlflow
    get the same names and steps (MLflow's names with ``@`` as ``_at_``)."""

    backends: list[str] = field(default_factory=lambda: ["jsonl", "tensorboard"])  # of jsonl, tensorboard, wandb, mlflow
    project: str = "gft-pipeline"  # the wandb project and the MLflow experiment (verl: trainer.project_name)
    run_name: str | None = None  # the wandb and MLflow run's name (verl: trainer.experiment_name); null: the run folder's
    wandb_mode: str = "online"  # online | offline: written to RUN_DIR/wandb only, for `wandb sync` to upload later
    mlflow_tracking_uri: str | None = None  # null: $MLFLOW_TRACKING_URI, else a SQLite store, RUN_DIR/mlflow.db


@dataclass
class RunConfig:
    name: str = "gft"
    seed: int = bounded(0, low=0, high=2**32 - 1)  # numpy's seeds are 32-bit
    output_dir: str = "runs"
    save_batches: bool = False  # write every step's learner batch to RUN_DIR/batches/*.arrow
    # a step whose update is skipped (non-finite loss or grad-norm) keeps the weights; this many
    # skipped steps in a row stop the run, with a resume checkpoint of the last good weights
    max_consecutive_skips: int = bounded(3, low=1)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    embedded: EmbeddedConfig = field(default_factory=EmbeddedConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    stages: list[StageConfig] = field(default_factory=list)

    def stage(self, name: str) -> StageConfig:
        return next(s for s in self.stages if s.name == name)


def learning_rate(stage: StageConfig, step: int) -> float:
    """The stage's learning rate at 1-based ``step``: linear warm-up, then constant or cosine."""
    scale = min(1.0, step / stage.warmup_steps) if stage.warmup_steps else 1.0
    if stage.lr_schedule == "cosine":
        progress = (step - 1) / max(1, stage.steps - 1)
        scale *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    return stage.lr * scale


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_name(key: str, name: str) -> None:
    _check(NAME.fullmatch(name) is not None, f"{key}: {name!r} names folders: up to 64 letters, digits, '.', '_' "
                                             "or '-', starting with a letter or digit")


def validate_stages(config: RunConfig) -> None:
    _check(bool(config.stages), "stages: the recipe has no stage")
    names = [s.name for s in config.stages]
    _check(len(set(names)) == len(names), f"stages: stage names repeat: {names}")
    for i, stage in enumerate(config.stages):
        _check_name(f"stages.{i}.name", stage.name)
        where = f"stages.{stage.name}"
        _check(stage.algorithm in STAGE_KINDS, f"{where}.algorithm: {stage.algorithm!r} is not one of {STAGE_KINDS}")
        if stage.algorithm == "eval":
            continue
        _check(stage.steps > 0, f"{where}.steps must be > 0, got {stage.steps}")
        _check(stage.lr_schedule in ("constant", "cosine"), f"{where}.lr_schedule must be constant or cosine")
        _validate_group(stage, where)
        unknown = sorted(set(stage.dcr_sources) - set(SOURCES))
        _check(not unknown, f"{where}.dcr_sources: {unknown} are not sources; the sources are {list(SOURCES)}")
        _check(stage.advantage_groups in ADVANTAGE_GROUPS,
               f"{where}.advantage_groups: {stage.advantage_groups!r} is not one of {', '.join(ADVANTAGE_GROUPS)}")
        _check(stage.sft_token_weight in SFT_TOKEN_WEIGHTS,
               f"{where}.sft_token_weight: {stage.sft_token_weight!r} is not one of {', '.join(SFT_TOKEN_WEIGHTS)}")


def _validate_group(stage: StageConfig, where: str) -> None:
    """A group holds only the sources its algorithm trains on, and enough rows for it."""
    algorithm, group = ALGORITHMS[stage.algorithm], stage.group
    for source in SOURCES:
        count = getattr(group, source)
        _check(count == 0 or source in algorithm.sources,
               f"{where}.group.{source} must be 0 for {algorithm.name}: it trains on {' and '.join(algorithm.sources)} "
               "rows only")
    size = group.expert + group.teacher + group.self
    _check(size > 0, f"{where}.group: group size is 0")
    if algorithm.name == "chord":
        _check(group.expert >= 1 and group.self >= 2,
               f"{where}.group: chord imitates the expert and compares the policy's own samples with each other: "
               f"it needs expert >= 1 and self >= 2, it has expert {group.expert} and self {group.self}")
    _check(size >= algorithm.min_group, f"{where}.group: {algorithm.name} normalises rewards within a prompt's group, "
                                        f"which needs {algorithm.min_group} rows or more; it has {size}")


def check_data(config: RunConfig, files: dict[str, list[PromptRecord]], stage_files: dict[str, list[str]]) -> None:
    """Once the training data is read (``files``: path -> records; ``stage_files``: each training
    stage's paths), before anything starts: every stage's step must find its prompts in its
    files, and, unless ``data.short_groups`` allows otherwise, every prompt the expert and teacher
    rows its stage's group asks for (a teacher model fills prompts that have none)."""
    for stage in config.stages:
        if stage.algorithm == "eval":
            continue
        mine = {path: files[path] for path in stage_files[stage.name]}
        num_prompts = sum(len(records) for records in mine.values())
        _check(stage.prompts_per_step <= num_prompts,
               f"stages.{stage.name}.prompts_per_step: {stage.prompts_per_step} prompts per step, but the training "
               f"data holds {num_prompts}")
        if config.data.short_groups == "allow":
            continue
        for path, records in mine.items():
            for source in OFF_POLICY_SOURCES:
                asked = getattr(stage.group, source)
                live = source == "teacher" and config.teacher.model_path is not None
                short = short_prompts(records, source, asked, filled_when_empty=live) if asked else 0
                if short:
                    raise DataError(
                        f"{path}: {short} of {len(records)} prompts have fewer than {asked} {source} candidates, "
                        f"which stages.{stage.name}.group.{source}={asked} asks for (`gft data check` counts them); "
                        f"their groups would train without them. Give the candidates, lower "
                        f"stages.{stage.name}.group.{source}, or accept short groups with data.short_groups=allow")


def _path_problem(path: str, kind: str) -> str | None:
    """Why ``path`` is not a readable ``kind`` (file or folder), or None when it is."""
    try:
        if Path(path).is_file() if kind == "file" else Path(path).is_dir():
            return None
        return f"is not a {kind}" if kind == "folder" or Path(path).exists() else "does not exist"
    except OSError as err:  # a name too long, a folder that may not be entered
        return f"cannot be read ({err.strerror})"


def _validate_eval_splits(config: RunConfig) -> None:
    """``eval.splits`` name eval sets the recipe has: its ``data.eval_files``, or the embedded
    task's test and ood sets. A recipe with none evaluates nothing, whatever the splits say."""
    embedded = ["test", "ood", *(["retain"] if config.embedded.n_retain_train else [])]
    known = list(config.data.eval_files) or (embedded if config.model.path == EMBEDDED else [])
    unknown = [split for split in config.eval.splits if split not in known]
    _check(not known or not unknown, f"eval.splits: {unknown} are not eval sets of this recipe; its sets: "
                                     f"{', '.join(known)} (data.eval_files names them)")


def validate_model_folder(key: str, path: str) -> None:
    """``path`` must be a Hugging Face model folder with safetensors weights: loading pickle
    weights can run code hidden in them, so they are refused, not loaded."""
    folder = Path(path)
    problem = _path_problem(path, "folder")
    _check(problem is None, f"{key}: {path} {problem}")
    _check(
        (folder / "config.json").is_file(), f"{key}: {path} has no config.json; it is not a Hugging Face model folder"
    )
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_WEIGHTS)
    if pickles:
        raise ConfigError(
            f"{key}: {path} holds only pickle weights ({', '.join(pickles)}); this tool loads safetensors "
            "only, convert them first (load the model once with transformers where you trust the file, "
            "then save_pretrained(folder, safe_serialization=True))"
        )
    raise ConfigError(f"{key}: {path} holds no weights (no *.safetensors file)")


def validate_logging(config: LoggingConfig) -> None:
    unknown = [b for b in config.backends if b not in BACKENDS]
    _check(not unknown, f"logging.backends: {unknown} are not backends; the backends are {', '.join(BACKENDS)}")
    _check("jsonl" in config.backends,
           "logging.backends must hold jsonl: metrics.jsonl is what resume points and gft compare read")
    _check(len(set(config.backends)) == len(config.backends), f"logging.backends: backends repeat: {config.backends}")
    _check(config.wandb_mode in WANDB_MODES,
           f"logging.wandb_mode: {config.wandb_mode!r} is not one of {', '.join(WANDB_MODES)}")
    # wandb comes with verl; MLflow is the extra [mlflow] (mlflow-skinny and its SQLite store)
    for backend, install in (("wandb", "pip install wandb"), ("mlflow", "pip install -e '.[mlflow]'")):
        _check(backend not in config.backends or importlib.util.find_spec(backend) is not None,
               f"logging.backends: {backend} is not installed here: {install}")


def _validate_paths(config: RunConfig, training: bool) -> None:
    """The model folders and data files the recipe names are there and of the right kind."""
    stage_files = [(f"stages.{s.name}.train_files", p) for s in config.stages if s.train_files for p in s.train_files]
    if config.model.path != EMBEDDED:
        validate_model_folder("model.path", config.model.path)
        without = [s.name for s in config.stages if s.algorithm != "eval" and not s.train_files]
        _check(not training or bool(config.data.train_files) or not without,
               f"data.train_files: a real model needs training data (stages {', '.join(without)} have none of "
               "their own)")
    for key, path in [("data.train_files", p) for p in config.data.train_files] + stage_files + [
        (f"data.eval_files.{k}", p) for k, p in config.data.eval_files.items()
    ]:
        problem = _path_problem(path, "file")
        _check(problem is None, f"{key}: {path} {problem}")
        _check(Path(path).suffix != ".jsonl" or Path(path).stem in BENCHMARKS,
               f"{key}: {path}: a .jsonl eval file must be one of the benchmarks {', '.join(BENCHMARKS)}")
    if config.teacher.model_path is not None:
        validate_model_folder("teacher.model_path", config.teacher.model_path)


def gpus_shared(config: RunConfig) -> bool:
    """Whether the learners and the rollout workers share GPUs (``ray.colocate``), which they may
    only by taking turns: ``gft plan`` sizes such a GPU for one of them at a time."""
    return config.ray.colocate and config.rollout.num_gpus > 0 and config.learner.num_gpus > 0


def validate(config: RunConfig, training: bool = True, check_paths: bool = True) -> None:
    """Refuse impossible settings before anything starts; each message names the key. Paths are
    relative to the working directory. ``training=False`` checks an eval-only job (no stages);
    ``check_paths=False`` leaves out what needs the model and data files (``gft plan``)."""
    check_bounds(config)
    _check_name("name", config.name)
    if training:
        validate_stages(config)
    rollout = config.rollout
    _check(rollout.backend in ("hf", "vllm"), f"rollout.backend: {rollout.backend!r} is not 'hf' or 'vllm'")
    _check(rollout.weight_sync in WEIGHT_SYNCS,
           f"rollout.weight_sync: {rollout.weight_sync!r} is not one of {', '.join(WEIGHT_SYNCS)}")
    # the rows' log-probs are the sampler's distribution's; the learner's are the policy's own
    weighed = [s.name for s in config.stages if s.algorithm in ALGORITHMS and ALGORITHMS[s.algorithm].old_log_probs]
    _check(not (training and rollout.max_staleness and weighed and (rollout.temperature != 1 or rollout.top_p != 1)),
           f"rollout.max_staleness: stage {weighed[0] if weighed else ''} weighs stale rows by the policy's probability "
           "over the sampler's, which are comparable only at rollout.temperature=1 and rollout.top_p=1 (now "
           f"{rollout.temperature:g} and {rollout.top_p:g}); sample at those, or set rollout.max_staleness=0")
    _check(not (rollout.max_staleness and gpus_shared(config)),
           "rollout.max_staleness: sampling ahead runs the rollout while the learner updates, which GPUs shared "
           "under ray.colocate=true cannot do (the engine and the update would not both fit, nor overlap); set "
           "ray.colocate=false to give the rollout GPUs of its own, or rollout.max_staleness=0")
    _check(not (rollout.max_staleness >= 2 and rollout.weight_sync == "collective"),
           f"rollout.max_staleness: {rollout.max_staleness} keeps rollouts on several versions of the weights in "
           "flight, and a collective sync sends the workers one version, the learner's, when they take it; set "
           "rollout.weight_sync=auto (the object store then holds each version) or rollout.max_staleness=1")
    _check(config.model.dtype in ("auto", "float32", "bfloat16"), "model.dtype must be auto, float32 or bfloat16")
    _check(not config.learner.fsdp or config.learner.num_workers >= 2,
           "learner.fsdp shards the model across learner ranks: set learner.num_workers >= 2, or learner.fsdp=false")
    for role in ("learner", "rollout", "teacher"):
        for name, amount in getattr(config, role).resources.items():
            _check(name not in RAY_OWN_RESOURCES, f"{role}.resources.{name}: ask for Ray's own resources with "
                                                  f"{role}.num_cpus and {role}.num_gpus")
            _check(amount > 0, f"{role}.resources.{name} must be > 0, got {amount}")
    for role in ("learner", "rollout"):  # each has a placement-group bundle, which cannot be empty
        section = getattr(config, role)
        _check(section.num_cpus + section.num_gpus > 0, f"{role}.num_cpus or {role}.num_gpus must be > 0")
    bad_rows = config.data.bad_rows
    _check(bad_rows in BAD_ROWS, f"data.bad_rows: {bad_rows!r} is not one of {', '.join(BAD_ROWS)}")
    _check(config.data.short_groups in SHORT_GROUPS,
           f"data.short_groups: {config.data.short_groups!r} is not one of {', '.join(SHORT_GROUPS)}")
    if check_paths:
        _validate_paths(config, training)
    _validate_eval_splits(config)
    unknown = [name for name in config.embedded.retain_stages if name not in [s.name for s in config.stages]]
    mixing = training and config.model.path == EMBEDDED and config.embedded.n_retain_train
    _check(not (mixing and unknown),
           f"embedded.retain_stages: {unknown} are not stages of this recipe")
    function = config.reward.function
    if check_paths and function is not None:
        problem = _path_problem(function, "file")
        _check(problem is None, f"reward.function: {function} {problem}")
    _check(config.reward.extraction in EXTRACTIONS,
           f"reward.extraction: {config.reward.extraction!r} is not one of {', '.join(EXTRACTIONS)}")
    _check(function is None or config.reward.extraction == DEFAULT_EXTRACTION,
           "reward.extraction applies to the built-in verifiers; a reward.function file finds answers its own way")
    validate_logging(config.logging)


def load_recipe(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                check_paths: bool = True) -> RunConfig:
    """Read a recipe (default: the embedded default), apply overrides, build and validate it."""
    tree = read_yaml(path or DEFAULT_RECIPE)
    for override in overrides:
        apply_override(tree, override)
    config = build(RunConfig, tree)
    validate(config, check_paths=check_paths)
    return config
