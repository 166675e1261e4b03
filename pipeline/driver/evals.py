"""Evaluation through the roles: the eval sets of a run (before training and after each stage),
and an eval-only job of a checkpoint (``gft eval``): greedy accuracy and pass@k per set."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from transformers import AutoTokenizer

from pipeline.core.data import PromptRecord
from pipeline.core.files import write_json_lines
from pipeline.driver.roles import Roles, start_ray
from pipeline.eval.evaluation import (
    EvalSet,
    format_benchmark_table,
    generation_rows,
    load_eval_set,
    summarize,
)
from pipeline.recipe.config import EvalConfig, RunConfig
from pipeline.recipe.configio import to_dict
from workers.sampling import SamplingParams


@dataclass
class EvalOutcome:
    metrics: dict
    greedy: pa.RecordBatch  # scored rows, one per prompt
    sampled: pa.RecordBatch  # scored rows, pass_k per prompt


def evaluate(roles: Roles, records: list[PromptRecord], eval_config: EvalConfig, temperature: float,
             seed: int) -> EvalOutcome:
    """Greedy accuracy and pass@k (k samples at the rollout temperature) on ``records``."""
    records = records[: eval_config.max_prompts]
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=eval_config.max_new_tokens)
    sampled = SamplingParams(n=eval_config.pass_k, temperature=temperature, max_new_tokens=eval_config.max_new_tokens)
    greedy_batch, _ = roles.score(roles.rollout(records, greedy, seed)[0])
    sampled_rows, rollout_metrics = roles.rollout(records, sampled, seed + 1)
    sampled_batch, _ = roles.score(sampled_rows)
    greedy_rewards = greedy_batch.column("reward").to_numpy()
    sampled_rewards = sampled_batch.column("reward").to_numpy().reshape(len(records), eval_config.pass_k)
    lengths = np.asarray(greedy_batch.column("response_ids").value_lengths())
    metrics = summarize(greedy_rewards, sampled_rewards, eval_config.pass_k, lengths)
    if "rollout_entropy" in rollout_metrics:  # the policy's entropy on its own samples
        metrics["entropy"] = rollout_metrics["rollout_entropy"]
    return EvalOutcome(metrics, greedy_batch, sampled_batch)


def load_eval_sets(config: RunConfig, eval_files: dict[str, str], tokenizer) -> dict[str, EvalSet]:
    return {
        split: load_eval_set(split, path, tokenizer, config.data.max_prompt_length, config.data.reward_fn_key)
        for split, path in eval_files.items()
        if split in config.eval.splits
    }


def evaluate_sets(roles: Roles, eval_sets: dict[str, EvalSet], config: RunConfig) -> dict[str, EvalOutcome]:
    outcomes = {}
    for split, eval_set in eval_sets.items():
        outcome = evaluate(roles, eval_set.records, config.eval, config.rollout.temperature, config.seed)
        outcome.metrics["skipped"] = len(eval_set.skipped)
        outcomes[split] = outcome
    return outcomes


def save_generations(outcomes: dict[str, EvalOutcome], tokenizer, folder: Path) -> None:
    for split, outcome in outcomes.items():
        write_json_lines(generation_rows(split, outcome.greedy, outcome.sampled, tokenizer), folder / f"{split}.jsonl")


def evaluate_checkpoint(config: RunConfig, out_dir: Path, verbose: bool = False) -> dict[str, dict]:
    """Evaluate ``config.model.path`` on ``config.data.eval_files``: metrics per eval set to
    ``out_dir/eval.json``, generations to ``out_dir/generations/<set>.jsonl``, the roles' output
    to ``out_dir/logs/`` (``verbose``: to the console)."""
    started = time.perf_counter()
    log_dir = None if verbose else out_dir / "logs"
    start_ray(config, log_dir)
    roles = Roles(config, config.model.path, learner=False, log_dir=log_dir)
    tokenizer = AutoTokenizer.from_pretrained(config.model.path, local_files_only=True)
    eval_sets = load_eval_sets(config, config.data.eval_files, tokenizer)
    try:
        outcomes = evaluate_sets(roles, eval_sets, config)
    finally:
        roles.close()
    save_generations(outcomes, tokenizer, out_dir / "generations")
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
