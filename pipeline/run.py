"""The driver: recipe -> stages -> steps, checkpoints, metrics and the final eval table.

Each stage starts from the previous stage's checkpoint folder and ends by writing its own, so a
GFT policy hands off to GRPO exactly as a user's model would (a Hugging Face folder).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ray
import yaml
from tqdm import tqdm
from transformers import AutoTokenizer

from pipeline.config import EMBEDDED, RunConfig, StageConfig, learning_rate
from pipeline.configio import to_dict
from pipeline.data import PromptSampler, load_prompts
from pipeline.embedded import build_embedded_assets
from pipeline.evaluation import (
    EvalSet,
    format_benchmark_table,
    format_table,
    generation_rows,
    load_eval_set,
)
from pipeline.files import atomic_path, write_json_lines
from pipeline.metrics import MetricsLogger
from pipeline.roles import Roles, start_ray
from pipeline.stages import EvalOutcome, evaluate, train_step


@dataclass
class RunResult:
    run_dir: Path
    checkpoints: dict[str, Path] = field(default_factory=dict)
    evals: dict[str, dict[str, dict]] = field(default_factory=dict)  # policy -> split -> metrics
    wall_time_s: float = 0.0


def _new_run_dir(config: RunConfig) -> Path:
    root = Path(config.output_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = root / f"{config.name}-{stamp}"
    suffix = 1
    while run_dir.exists():
        run_dir, suffix = root / f"{config.name}-{stamp}-{suffix}", suffix + 1
    run_dir.mkdir(parents=True)
    return run_dir


def _resolve_inputs(config: RunConfig, run_dir: Path) -> tuple[str, list[str], dict[str, str]]:
    """(base model folder, train files, eval files); builds the embedded task when asked."""
    if config.model.path != EMBEDDED:
        return config.model.path, config.data.train_files, config.data.eval_files
    e = config.embedded
    assets = build_embedded_assets(
        run_dir / "embedded", e.task, e.model, n_train=e.n_train, n_test=e.n_test, n_ood=e.n_ood, n_teacher=e.n_teacher
    )
    train = config.data.train_files or [str(assets.train)]
    evals = config.data.eval_files or {"test": str(assets.test), "ood": str(assets.ood)}
    return str(assets.base_model), train, evals


def _load_eval_sets(config: RunConfig, eval_files: dict[str, str], tokenizer) -> dict[str, EvalSet]:
    return {
        split: load_eval_set(split, path, tokenizer, config.data.max_prompt_length)
        for split, path in eval_files.items()
        if split in config.eval.splits
    }


def _evaluate_sets(roles: Roles, eval_sets: dict[str, EvalSet], config: RunConfig) -> dict[str, EvalOutcome]:
    outcomes = {}
    for split, eval_set in eval_sets.items():
        outcome = evaluate(roles, eval_set.records, config.eval, config.rollout.temperature, config.seed)
        outcome.metrics["skipped"] = len(eval_set.skipped)
        outcomes[split] = outcome
    return outcomes


def _save_generations(outcomes: dict[str, EvalOutcome], tokenizer, folder: Path) -> None:
    for split, outcome in outcomes.items():
        write_json_lines(generation_rows(split, outcome.greedy, outcome.sampled, tokenizer), folder / f"{split}.jsonl")


def _progress_postfix(metrics: dict) -> dict:
    return {"reward": f"{metrics['reward']:.3f}", "loss": f"{metrics['loss']:.4f}"}


def _train_stage(stage: StageConfig, roles: Roles, sampler: PromptSampler, config: RunConfig, run_dir: Path,
                 logger: MetricsLogger, eval_sets: dict[str, EvalSet], version: int, global_step: int,
                 on_step: Callable[[], None] | None):
    roles.learner.start_stage.remote(stage.lr, stage.weight_decay, stage.max_grad_norm)
    bar = tqdm(range(1, stage.steps + 1), desc=f"{stage.name} ({stage.algorithm})", unit="step", dynamic_ncols=True,
               disable=on_step is not None)
    for step in bar:
        roles.learner.set_lr.remote(learning_rate(stage, step))
        records = sampler.next(stage.prompts_per_step)
        dump = run_dir / "batches" / f"{stage.name}-{step:05d}.arrow" if config.save_batches else None
        metrics = train_step(roles, stage, records, config, seed=config.seed * 1_000_003 + global_step, batch_dump=dump)
        version = int(metrics["policy_version"])
        global_step += 1
        if stage.eval_every and step % stage.eval_every == 0 and step < stage.steps:
            for split, outcome in _evaluate_sets(roles, eval_sets, config).items():
                metrics.update({f"eval/{split}/{k}": v for k, v in outcome.metrics.items()})
        logger.log(stage.name, step, metrics)
        bar.set_postfix(_progress_postfix(metrics))
        if on_step is not None:
            on_step()
    bar.close()
    return version, global_step


def run(config: RunConfig, run_dir: Path | None = None, on_step: Callable[[], None] | None = None) -> RunResult:
    """Run every stage of ``config`` and return where things went and the eval table.

    ``run_dir``: an empty folder to use (default: a new ``output_dir/<name>-<time>``).
    ``on_step``: called after every training step, in place of the per-stage progress bars.
    """
    started = time.perf_counter()
    if run_dir is None:
        run_dir = _new_run_dir(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    result = RunResult(run_dir)
    base_model, train_files, eval_files = _resolve_inputs(config, run_dir)

    start_ray(config)
    roles = Roles(config, base_model)
    tokenizer = AutoTokenizer.from_pretrained(base_model, local_files_only=True)
    train_records = [r for path in train_files for r in load_prompts(path, tokenizer, config.data.max_prompt_length)]
    eval_sets = _load_eval_sets(config, eval_files, tokenizer)
    sampler = PromptSampler(train_records, config.seed)

    def record_eval(policy: str) -> None:
        outcomes = _evaluate_sets(roles, eval_sets, config)
        _save_generations(outcomes, tokenizer, run_dir / "generations" / policy)
        result.evals[policy] = {split: outcome.metrics for split, outcome in outcomes.items()}
        logger.log("eval", len(result.evals), {"after_steps": global_step} | {
            f"{policy}/{s}/{k}": v for s, m in result.evals[policy].items() for k, v in m.items()})

    policy_path, version, global_step = base_model, 0, 0
    with MetricsLogger(run_dir) as logger:
        record_eval("base")
        for stage in config.stages:
            if stage.algorithm == "eval":
                record_eval(stage.name)
                continue
            roles.load_policy(policy_path, version)
            version, global_step = _train_stage(
                stage, roles, sampler, config, run_dir, logger, eval_sets, version, global_step, on_step
            )
            checkpoint = Path(ray.get(roles.learner.save.remote(str(run_dir / "checkpoints" / stage.name))))
            result.checkpoints[stage.name] = checkpoint
            policy_path = str(checkpoint)
            record_eval(stage.name)

    result.wall_time_s = time.perf_counter() - started
    # written last and atomically: its presence says the run finished (``gft compare`` relies on it)
    with atomic_path(run_dir / "eval.json") as tmp:
        tmp.write_text(json.dumps({"evals": result.evals, "wall_time_s": result.wall_time_s}, indent=2))
    return result


def summary(result: RunResult, k: int) -> str:
    lines = [format_table(result.evals, k), "", f"run folder: {result.run_dir}"]
    lines += [f"checkpoint {name}: {path}" for name, path in result.checkpoints.items()]
    lines.append(f"wall time: {result.wall_time_s:.0f} s")
    return "\n".join(lines)


def evaluate_checkpoint(config: RunConfig, out_dir: Path) -> dict[str, dict]:
    """Evaluate ``config.model.path`` on ``config.data.eval_files``: metrics per eval set to
    ``out_dir/eval.json``, generations to ``out_dir/generations/<set>.jsonl``."""
    started = time.perf_counter()
    start_ray(config)
    roles = Roles(config, config.model.path, learner=False)
    tokenizer = AutoTokenizer.from_pretrained(config.model.path, local_files_only=True)
    eval_sets = _load_eval_sets(config, config.data.eval_files, tokenizer)
    outcomes = _evaluate_sets(roles, eval_sets, config)
    _save_generations(outcomes, tokenizer, out_dir / "generations")
    results = {split: outcome.metrics for split, outcome in outcomes.items()}
    report = {
        "checkpoint": config.model.path,
        "results": results,
        "skipped": {split: s.skipped for split, s in eval_sets.items() if s.skipped},
        "settings": to_dict(config.eval) | {"temperature": config.rollout.temperature, "seed": config.seed},
        "wall_time_s": time.perf_counter() - started,
    }
    (out_dir / "eval.json").write_text(json.dumps(report, indent=2))
    return results


def eval_summary(results: dict[str, dict], k: int, out_dir: Path) -> str:
    return "\n".join([format_benchmark_table(results, k), "", f"results: {out_dir / 'eval.json'}",
                      f"generations: {out_dir / 'generations'}"])
