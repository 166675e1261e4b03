"""The driver: recipe -> stages -> steps, checkpoints, metrics and the final eval table.

Each stage starts from the previous stage's checkpoint folder and ends by writing its own, so a
GFT policy hands off to GRPO exactly as a user's model would (a Hugging Face folder).
"""

from __future__ import annotations

import collections
import errno
import functools
import hashlib
import json
import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import yaml
from tqdm import tqdm
from transformers import AutoTokenizer

from pipeline.core.batch import OFF_POLICY_SOURCES
from pipeline.core.data import PromptRecord, PromptSampler, prompt_share, read_prompt_file
from pipeline.core.errors import DiskFull, PolicyNotFinite, RoleFailed, StopRequested, TrainingStopped
from pipeline.core.files import atomic_path, write_json_lines
from pipeline.core.metric_sinks import MetricSink, MlflowSink, TensorBoardSink, WandbSink
from pipeline.core.metrics import MetricsLogger
from pipeline.core.resume import (
    KeptRollout,
    Progress,
    ResumePoint,
    chosen_point,
    kept_rollout_files,
    latest_point,
    points,
    prune,
    read_kept_rollouts,
    write_point,
)
from pipeline.core.run_folder import RunLock, claim_new
from pipeline.driver.evals import evaluate_sets, load_eval_sets, save_generations
from pipeline.driver.roles import Roles, RolloutCall, check_cluster, start_ray
from pipeline.driver.rollout_env import check_rollout_environment
from pipeline.driver.stages import self_sampling, train_step
from pipeline.embedded import build_embedded_assets
from pipeline.eval.evaluation import EvalSet, format_table
from pipeline.recipe.algorithms import needs_reference
from pipeline.recipe.config import EMBEDDED, RunConfig, StageConfig, check_data, learning_rate
from pipeline.recipe.configio import to_dict
from workers.sampling import SamplingParams

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    checkpoints: dict[str, Path] = field(default_factory=dict)
    evals: dict[str, dict[str, dict]] = field(default_factory=dict)  # policy -> split -> metrics
    wall_time_s: float = 0.0
    skipped_rows: int = 0  # bad training rows left out (data.bad_rows=skip)
    short_groups: dict[str, int] = field(default_factory=dict)  # source -> groups short of it (data.short_groups)


@dataclass
class Inputs:
    base_model: str
    tokenizer: object
    train_records: list[PromptRecord]  # of the run's train files: what a stage without files of its own draws from
    eval_sets: dict[str, EvalSet]
    skipped_rows: dict[str, list[str]]  # train file -> its bad rows left out, each with its problems
    # stage -> the prompts of a stage that draws from files other than the run's: its own, or the
    # run's and the embedded retain family's
    own_records: dict[str, list[PromptRecord]] = field(default_factory=dict)

    def stage_records(self, stage: StageConfig) -> list[PromptRecord]:
        """The prompts ``stage`` draws from."""
        return self.own_records.get(stage.name, self.train_records)

    def draws_apart(self, stage: StageConfig) -> bool:
        """Whether ``stage`` draws from prompts of its own (files, or a share of them), with a
        sampler of its own; the others share the run's, which goes on from stage to stage."""
        return stage.name in self.own_records or stage.data_fraction < 1


def _load_inputs(config: RunConfig, run_dir: Path) -> Inputs:
    """The base model folder, tokenized training prompts and eval sets; builds the embedded task
    when asked. Every data problem surfaces here, before Ray starts."""
    base_model, train_files, eval_files = config.model.path, config.data.train_files, config.data.eval_files
    mixed_in = {}  # stage -> training files it draws from beside the run's (the embedded retain family)
    if config.model.path == EMBEDDED:
        e = config.embedded
        assets = build_embedded_assets(run_dir / "embedded", e.task, e.model, n_train=e.n_train, n_test=e.n_test,
                                       n_ood=e.n_ood, n_teacher=e.n_teacher, n_retain_train=e.n_retain_train)
        base_model = str(assets.base_model)
        train_files = train_files or [str(assets.train)]
        retain = {"retain": str(assets.retain)} if assets.retain else {}
        eval_files = eval_files or {"test": str(assets.test), "ood": str(assets.ood), **retain}
        if assets.retain_train:
            mixed_in = {name: [str(assets.retain_train)] for name in e.retain_stages}
    tokenizer = AutoTokenizer.from_pretrained(base_model, local_files_only=True)
    data = config.data
    files, skipped = {}, {}
    stage_files = {stage.name: [str(p) for p in stage.train_files or [*train_files, *mixed_in.get(stage.name, [])]]
                   for stage in config.stages if stage.algorithm != "eval"}
    for path in dict.fromkeys([*map(str, train_files), *(p for paths in stage_files.values() for p in paths)]):
        prompt_file = read_prompt_file(path, tokenizer, data.max_prompt_length, bad_rows=data.bad_rows,
                                       reward_fn_key=data.reward_fn_key)
        files[str(path)] = prompt_file.records
        if prompt_file.skipped:
            skipped[str(path)] = prompt_file.skipped
            logger.warning("%s: %d bad rows skipped (data.bad_rows=skip); the first: %s",
                           path, len(prompt_file.skipped), prompt_file.skipped[0])
    check_data(config, files, stage_files)
    records = [record for path in train_files for record in files[str(path)]]
    return Inputs(base_model, tokenizer, records, load_eval_sets(config, eval_files, tokenizer), skipped,
                  {name: [record for path in paths for record in files[path]] for name, paths in stage_files.items()
                   if paths != [str(path) for path in train_files]})


class _StopSignal:
    """SIGTERM (as ``gft stop``, ``kill`` and cluster schedulers send it) and SIGINT (Ctrl-C, which a
    terminal sends to the whole process group: Ray's own processes ignore it) ask the driver to
    stop at the next step boundary (see ``_Driver.stop_if_asked``) instead of dying mid-write. A
    second one ends the run at once: the handler raises ``KeyboardInterrupt``, the one exception
    that Ray lets out of a waiting ``ray.get``."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: signal.Signals | None = None
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self.previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            self.received = signal.Signals(signum)
            raise KeyboardInterrupt
        self.received = signal.Signals(signum)
        logger.warning("%s received: stopping after the step under way, with a resume point (again: at once)",
                       self.received.name)

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


@dataclass
class _Ahead:
    """The rollout of a later step of the stage, started while a step before it trains
    (rollout.max_staleness k): its prompts, the sampler's position after them, how it samples,
    and the rollout under way or, once waited for (or read back from a resume point), its rows
    and metrics."""

    records: list[PromptRecord]
    position: tuple[int, int]
    sampling: SamplingParams
    call: RolloutCall | None = None
    rows: tuple[pa.RecordBatch, dict] | None = None


def kept_rollout_fits(kept: KeptRollout, sampling: SamplingParams, records: list[PromptRecord]) -> bool:
    """Whether the rollout a resume point kept is the one a step now asks for: the same sampling
    settings and the same prompts (a resume that changed either samples anew)."""
    prompts = set(kept.rows.column("group_id").to_pylist())
    return SamplingParams(**kept.sampling) == sampling and prompts == {r.uid for r in records}


class _Driver:
    """The stages of one run, step by step, keeping :class:`Progress` so that every resume point
    (``pipeline.core.resume``) says exactly where to pick the run back up."""

    def __init__(self, config: RunConfig, run_dir: Path, inputs: Inputs, roles: Roles, metrics: MetricsLogger,
                 start: ResumePoint | None, on_step: Callable[[], None] | None, stop: _StopSignal):
        self.config, self.run_dir, self.inputs, self.roles, self.metrics = config, run_dir, inputs, roles, metrics
        self.start, self.on_step, self.stop = start, on_step, stop
        self.progress = start.progress if start else Progress(stage_start=inputs.base_model)
        self.sampler = PromptSampler(inputs.train_records, config.seed)
        self.sampler.seek(*self.progress.sampler)
        self.stage_samplers: dict[str, PromptSampler] = {}  # stage -> its own sampler (Inputs.draws_apart)
        self.ahead: collections.deque[_Ahead] = collections.deque()  # the stage's next steps', in order
        if start and config.rollout.max_staleness:  # the point's next steps were sampled already
            self.ahead.extend(self.redrawn(read_kept_rollouts(start)[:config.rollout.max_staleness]))

    def redrawn(self, kept: list[KeptRollout]) -> list[_Ahead]:
        """The rollouts a resume point kept, each with its prompts drawn again from the sampler
        where the point left it, as the uninterrupted run drew them when it started those
        rollouts; from the first that no longer fits the recipe, none (those steps sample anew)."""
        stage, p = self.current_stage(), self.progress
        sampler, sampling = self.sampler_for(stage), self_sampling(stage, self.config)
        ahead = []
        for index, rollout in enumerate(kept, start=1):
            before = sampler.position
            records = sampler.next(stage.prompts_per_step)
            if not kept_rollout_fits(rollout, sampling, records):
                logger.warning("stage %s step %d: the rollout the resume point kept for it was sampled with other "
                               "settings (%s) or prompts than the recipe now asks for; sampling it again",
                               stage.name, p.step + index, rollout.sampling)
                sampler.seek(*before)
                break
            ahead.append(_Ahead(records, sampler.position, sampling, rows=(rollout.rows, rollout.metrics)))
        return ahead

    def run(self) -> None:
        try:
            self.run_stages()
        except KeyboardInterrupt:  # a second SIGTERM or SIGINT: out at once, from the middle of a step
            raise StopRequested(self.interrupted(), self.stop.received or signal.SIGINT) from None
        except PolicyNotFinite as err:  # raised in a rollout actor: its own message, not Ray's traceback
            raise TrainingStopped(self.blown_up(getattr(err, "cause", err))) from None
        except RoleFailed as err:  # a role's process gone for good: say where the run stood and where it goes on
            p, point = self.progress, latest_point(self.run_dir)
            kept = f" (global step {point.progress.global_step})" if point else ""
            raise RoleFailed(f"stage {self.current_stage().name}, after step {p.step} (global step {p.global_step}): "
                             f"{err}\nThe run can continue from its last resume point{kept}: gft run --resume "
                             f"{self.run_dir}") from err

    def current_stage(self) -> StageConfig:
        return self.config.stages[min(self.progress.stage_index, len(self.config.stages) - 1)]

    def run_stages(self) -> None:
        if "base" not in self.progress.evals:
            self.record_eval("base")
        for index, stage in enumerate(self.config.stages):
            if index < self.progress.stage_index:
                continue
            if stage.algorithm == "eval":
                self.record_eval(stage.name)
            else:
                self.train(stage)
            self.progress.stage_index, self.progress.step = index + 1, 0
            self.save_point(learner=False)

    def stop_if_asked(self, stage: StageConfig) -> None:
        """After SIGTERM or SIGINT, between two steps: write a resume point of the last step done and stop."""
        received = self.stop.received
        if received is None:
            return
        p = self.progress
        point = self.save_point(learner=p.step > 0)  # at a stage's start, its start checkpoint is the policy
        raise StopRequested(
            f"{received.name}: stopped before step {p.step + 1} of stage {stage.name} (global step {p.global_step} "
            f"done); resume point: {point}. Continue with: gft run --resume {self.run_dir} (on a cluster: gft submit "
            f"--resume {self.run_dir})", received)

    def interrupted(self) -> str:
        """What to say when a second signal ended the run mid-step."""
        p, point, stage = self.progress, latest_point(self.run_dir), self.current_stage()
        where = f"in step {p.step + 1} of stage {stage.name}" if p.step < stage.steps else f"ending stage {stage.name}"
        kept = (f"its newest resume point, {point.folder}, holds global step {point.progress.global_step}"
                if point else "it has no resume point yet")
        return (f"a second signal ({self.stop.received.name}): stopped at once, {where}; {kept}. Continue with: "
                f"gft run --resume {self.run_dir}")

    def blown_up(self, err: PolicyNotFinite) -> str:
        """What to say when the policy's weights have grown too large to sample from."""
        p, stage = self.progress, self.current_stage()
        point = latest_point(self.run_dir)
        where = (f"its newest resume point, {point.folder}, holds the weights of global step "
                 f"{point.progress.global_step}. Lower the learning rate (stages.{stage.name}.lr={stage.lr:g} now) and "
                 f"continue with: gft run --resume {self.run_dir} stages.{stage.name}.lr=..." if point else
                 "the run has no resume point yet; run it again with a lower learning rate "
                 f"(stages.{stage.name}.lr={stage.lr:g} now)")
        return f"stage {stage.name}, after step {p.step} (global step {p.global_step}): {err}. The weights have grown " \
               f"too large for the logits to stay finite; {where}"

    def record_eval(self, policy: str) -> None:
        outcomes = evaluate_sets(self.roles, self.inputs.eval_sets, self.config)
        save_generations(outcomes, self.inputs.tokenizer, self.run_dir / "generations" / policy)
        evals = self.progress.evals
        evals[policy] = {split: outcome.metrics for split, outcome in outcomes.items()}
        g = self.progress.global_step
        self.metrics.log("eval", len(evals), {"after_steps": g} | {
            f"{policy}/{s}/{k}": v for s, m in evals[policy].items() for k, v in m.items()}, global_step=g)

    def train(self, stage: StageConfig) -> None:
        p, mid_stage = self.progress, self.progress.step > 0
        # resumed mid-stage: weights, optimizer and RNG from the point; the reference from the stage start
        self.roles.load_policy(str(self.start.folder) if mid_stage else p.stage_start, p.policy_version)
        self.roles.start_stage(p.stage_start if needs_reference(stage) else None, stage.lr, stage.weight_decay,
                               stage.max_grad_norm)
        if mid_stage:
            self.roles.restore(self.start.folder)
        # closed however the loop ends, so that a stop's message starts on a line of its own
        with tqdm(total=stage.steps, initial=p.step, desc=f"{stage.name} ({stage.algorithm})", unit="step",
                  dynamic_ncols=True, disable=self.on_step is not None) as bar:
            for step in range(p.step + 1, stage.steps + 1):
                self.stop_if_asked(stage)
                metrics = self.step(stage, step)
                bar.update(1)
                bar.set_postfix({"reward": f"{metrics['reward']:.3f}", "loss": f"{metrics['loss']:.4f}"})
                every = self.config.checkpoint.every
                if every and step % every == 0 and step < stage.steps:
                    self.save_point(learner=True)
        checkpoint = self.roles.save_checkpoint(self.run_dir / "checkpoints" / stage.name)
        p.checkpoints[stage.name] = p.stage_start = str(checkpoint)
        self.record_eval(stage.name)

    def step(self, stage: StageConfig, step: int) -> dict:
        p, config = self.progress, self.config
        self.roles.set_lr(learning_rate(stage, step))
        ahead = self.ahead.popleft() if self.ahead else None
        if ahead is not None:
            records, position = ahead.records, ahead.position
        else:
            sampler = self.sampler_for(stage)
            records, position = sampler.next(stage.prompts_per_step), sampler.position
        dump = self.run_dir / "batches" / f"{stage.name}-{step:05d}.arrow" if config.save_batches else None
        ahead_of_next = config.rollout.max_staleness and stage.group.self and step < stage.steps
        metrics = train_step(self.roles, stage, records, config, seed=self.seed(p.global_step), batch_dump=dump,
                             measure_kl=bool(stage.kl_every) and step % stage.kl_every == 0,
                             sampled=self.wait_for(ahead) if ahead is not None else None,
                             start_next=functools.partial(self.start_ahead, stage, step) if ahead_of_next else None,
                             step=step)
        p.step, p.global_step, p.policy_version = step, p.global_step + 1, int(metrics["policy_version"])
        if self.inputs.draws_apart(stage):
            p.stage_samplers[stage.name] = position
        else:
            p.sampler = position
        for source in OFF_POLICY_SOURCES:
            p.short_groups[source] = p.short_groups.get(source, 0) + int(metrics.get(f"short_groups/{source}", 0))
        if stage.eval_every and step % stage.eval_every == 0 and step < stage.steps:
            self.settle()
            for split, outcome in evaluate_sets(self.roles, self.inputs.eval_sets, config).items():
                metrics.update({f"eval/{split}/{k}": v for k, v in outcome.metrics.items()})
        self.metrics.log(stage.name, step, metrics, global_step=p.global_step)
        if self.on_step is not None:
            self.on_step()
        self.check_skips(stage, step, metrics)
        return metrics

    def seed(self, global_step: int) -> int:
        """The sampling seed of the step after ``global_step`` steps."""
        return self.config.seed * 1_000_003 + global_step

    def start_ahead(self, stage: StageConfig, step: int) -> None:
        """Have the rollouts of the stage's next ``rollout.max_staleness`` steps under way: start
        those not yet started, now, on the weights the coming update of ``step`` will replace."""
        sampler, sampling = self.sampler_for(stage), self_sampling(stage, self.config)
        last = min(step + self.config.rollout.max_staleness, stage.steps)
        for later in range(step + 1 + len(self.ahead), last + 1):
            records = sampler.next(stage.prompts_per_step)
            seed = self.seed(self.progress.global_step + later - step)
            call = self.roles.start_rollout(records, sampling, seed, ahead=True)
            self.ahead.append(_Ahead(records, sampler.position, sampling, call=call))

    def sampler_for(self, stage: StageConfig) -> PromptSampler:
        """The run's sampler, or, for a stage that draws from prompts of its own (its files, or a
        share of the prompts), its own, where its last step left it."""
        if not self.inputs.draws_apart(stage):
            return self.sampler
        if stage.name not in self.stage_samplers:
            share = prompt_share(self.inputs.stage_records(stage), stage.data_fraction, self.config.seed)
            sampler = self.stage_samplers[stage.name] = PromptSampler(share, self.config.seed)
            sampler.seek(*self.progress.stage_samplers.get(stage.name, (0, 0)))
        return self.stage_samplers[stage.name]

    def wait_for(self, ahead: _Ahead) -> Callable[[], tuple[pa.RecordBatch, dict]]:
        """The rows of ``ahead``, waited for when asked."""
        return lambda: ahead.rows if ahead.rows is not None else self.roles.finish_rollout(ahead.call)

    def settle(self) -> None:
        """Wait for the rollouts under way, keeping their rows: before anything else uses the
        rollout workers (an eval) or a resume point is written (which keeps them)."""
        for ahead in self.ahead:
            if ahead.rows is None:
                ahead.rows = self.roles.finish_rollout(ahead.call)

    def check_skips(self, stage: StageConfig, step: int, metrics: dict) -> None:
        """Count updates skipped in a row (a non-finite loss or grad-norm leaves the weights as
        they were); too many stop the run with a resume point of the last good weights."""
        p = self.progress  # the count is part of every resume point: a resume does not reset it
        if not metrics["skipped_updates"]:
            p.consecutive_skips = 0
            return
        p.consecutive_skips += 1
        limit = self.config.max_consecutive_skips
        logger.warning("stage %s step %d: update skipped, loss %s, grad-norm %s (%d in a row, limit %d)",
                       stage.name, step, metrics["loss"], metrics["grad_norm"], p.consecutive_skips, limit)
        if p.consecutive_skips >= limit:
            point = self.save_point(learner=True)
            raise TrainingStopped(
                f"stage {stage.name}, step {step}: {p.consecutive_skips} updates in a row were skipped because the "
                f"loss or the grad-norm was not finite (max_consecutive_skips={limit}). The weights of the last good update "
                f"are in {point}. Look at the learning rate (stages.{stage.name}.lr), the rewards and the data, then "
                f"continue with: gft run --resume {self.run_dir} [key=value ...]")

    def save_point(self, learner: bool) -> Path:
        self.progress.metrics_bytes = self.metrics.tell()
        if learner:
            self.settle()
            kept = kept_rollout_files([KeptRollout(*ahead.rows, asdict(ahead.sampling)) for ahead in self.ahead])
            point = self.roles.save_resume_point(self.run_dir, self.progress, kept or None)
        else:  # between stages the next stage starts from a stage checkpoint: no weights needed
            point = write_point(self.run_dir, self.progress)
        prune(self.run_dir, self.config.checkpoint.keep_last)
        return point


def run(config: RunConfig, run_dir: Path | None = None, on_step: Callable[[], None] | None = None,
        resume: bool = False, resume_point: Path | None = None, verbose: bool = False) -> RunResult:
    """Run every stage of ``config`` and return where things went and the eval table.

    ``run_dir``: the folder to use (default: a new ``output_dir/<name>-<time>``).
    ``on_step``: called after every training step, in place of the per-stage progress bars.
    ``resume``: continue the run in ``run_dir`` from its latest intact resume point (from the
    start when it has none), redoing nothing that point covers and skipping nothing after it;
    or from ``resume_point``, one of its points, discarding those after it.
    ``verbose``: the roles' processes (and Ray) write to the console, not to ``RUN_DIR/logs/``.
    """
    started = time.perf_counter()
    check_rollout_environment(config)
    check_cluster(config)
    fresh = run_dir is None or not Path(run_dir).exists()
    run_dir = Path(run_dir) if run_dir is not None else claim_new(Path(config.output_dir), config.name)
    try:
        with RunLock(run_dir):
            result = _run(config, run_dir, fresh, on_step, resume, resume_point, None if verbose else run_dir / "logs")
            result.wall_time_s = time.perf_counter() - started
            # written last and atomically: its presence says the run finished (``gft compare`` relies on it)
            with atomic_path(run_dir / "eval.json") as tmp:
                tmp.write_text(json.dumps({"evals": result.evals, "wall_time_s": result.wall_time_s}, indent=2))
    except OSError as err:
        full = getattr(err, "cause", err)  # the learner's writes fail inside its actor
        if not isinstance(full, OSError) or full.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DiskFull(_disk_full_message(run_dir, full)) from None
    return result


def _run(config: RunConfig, run_dir: Path, fresh: bool, on_step: Callable[[], None] | None, resume: bool,
         resume_point: Path | None, log_dir: Path | None) -> RunResult:
    try:
        inputs = _load_inputs(config, run_dir)
    except BaseException:
        if fresh:  # a refused recipe or dataset leaves nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    with atomic_path(run_dir / "config.yaml") as tmp:  # on a resume, with its overrides
        tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    if inputs.skipped_rows:
        write_json_lines([{"file": f, "row": r} for f, rows in inputs.skipped_rows.items() for r in rows],
                         run_dir / "skipped_rows.jsonl")
    start = None
    if resume:
        start = chosen_point(resume_point) if resume_point else latest_point(run_dir)
        (run_dir / "eval.json").unlink(missing_ok=True)  # from an earlier point: not finished any more
    if start is not None:
        logger.warning("resuming %s at stage %d step %d (global step %d) from %s", run_dir,
                       start.progress.stage_index, start.progress.step, start.progress.global_step, start.folder)

    keep_bytes = start.progress.metrics_bytes if start else (0 if resume else None)
    try:  # before Ray: a backend that cannot start (wandb online without a key) is the user's to fix
        metrics = MetricsLogger(run_dir, keep_bytes, metric_sinks(config, run_dir), recipe_identity(config))
    except BaseException:
        if fresh:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    with metrics:
        start_ray(config, log_dir)
        with _StopSignal() as stop:  # after ray.init, which sets a SIGTERM handler of its own
            roles = Roles(config, inputs.base_model, log_dir=log_dir)
            try:
                with atomic_path(run_dir / "placement.json") as tmp:  # where this attempt's roles run
                    tmp.write_text(json.dumps({"nodes": roles.nodes, "weight_sync": roles.weight_sync}, indent=2))
                driver = _Driver(config, run_dir, inputs, roles, metrics, start, on_step, stop)
                driver.run()
            finally:
                roles.close()

    progress = driver.progress
    return RunResult(run_dir, {k: Path(v) for k, v in progress.checkpoints.items()}, progress.evals,
                     skipped_rows=sum(len(rows) for rows in inputs.skipped_rows.values()),
                     short_groups={source: n for source, n in progress.short_groups.items() if n})


def metric_sinks(config: RunConfig, run_dir: Path) -> list[MetricSink]:
    """The backends of ``logging.backends`` besides metrics.jsonl, which the logger always writes."""
    settings, recipe = config.logging, to_dict(config)
    name = settings.run_name or run_dir.name
    made = {"tensorboard": lambda: TensorBoardSink(run_dir),
            "wandb": lambda: WandbSink(run_dir, settings.project, name, settings.wandb_mode, recipe),
            "mlflow": lambda: MlflowSink(run_dir, settings.project, name, settings.mlflow_tracking_uri, recipe)}
    return [made[backend]() for backend in settings.backends if backend != "jsonl"]


def recipe_identity(config: RunConfig) -> str:
    """What a resumed run must share with its first attempt for the steps it redoes to be the same
    ones: the recipe, less where its metrics and resume points go and which cluster it runs on."""
    recipe = {key: value for key, value in to_dict(config).items() if key not in ("logging", "checkpoint", "ray")}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _disk_full_message(run_dir: Path, err: OSError) -> str:
    """Where the disk filled, how much a checkpoint of this run needs, and what was kept."""
    free = shutil.disk_usage(run_dir if run_dir.exists() else run_dir.parent).free
    stage_checkpoints = [f for f in (run_dir / "checkpoints").glob("*")
                         if f.is_dir() and f.name != "resume" and not f.name.startswith(".")]  # hidden: unfinished
    folders = [p.folder for p in points(run_dir)] + stage_checkpoints
    sizes = [sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) for folder in folders]
    needed = f"{max(sizes):,} bytes, the size of the largest it has written" if sizes else "unknown until one is written"
    latest = latest_point(run_dir)
    kept = f"its newest resume point, {latest.folder}, is intact" if latest else "it has no resume point yet"
    return (f"no space left on the device holding {run_dir} while writing {err.filename or 'a file'}: "
            f"{free:,} bytes free; a checkpoint or resume point of this run needs about {needed}. The write was "
            f"abandoned and nothing written before it was touched: {kept}. Free space, then continue with: "
            f"gft run --resume {run_dir}")


def summary(result: RunResult, k: int) -> str:
    lines = [format_table(result.evals, k), "", f"run folder: {result.run_dir}"]
    lines += [f"checkpoint {name}: {path}" for name, path in result.checkpoints.items()]
    if result.skipped_rows:
        lines.append(f"bad training rows skipped: {result.skipped_rows} (listed in {result.run_dir / 'skipped_rows.jsonl'})")
    if result.short_groups:
        counts = ", ".join(f"{n} short of {source} rows" for source, n in result.short_groups.items())
        lines.append(f"prompt groups short of what their stage asked (data.short_groups=allow): {counts}")
    lines.append(f"wall time: {result.wall_time_s:.0f} s")
    return "\n".join(lines)
