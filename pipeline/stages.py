"""What one step of each stage does: build the groups, score them, weigh them, update.

The algorithms differ in three places: which sources fill a group (the stage's ``group``), how
rewards become advantages (here), and which pure loss the learner calls (``pipeline.objectives``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from pipeline.advantages import group_advantages
from pipeline.batch import SOURCES, concat_batches, make_batch, with_column, write_batch
from pipeline.config import EvalConfig, RunConfig, StageConfig
from pipeline.data import PromptRecord
from pipeline.evaluation import summarize
from pipeline.losses import per_source_means
from pipeline.objectives import objective_for
from pipeline.roles import Roles
from workers.hf_generate import SamplingParams


def off_policy_rows(records: list[PromptRecord], source: str, count: int, roles: Roles, config: RunConfig, seed: int):
    """Up to ``count`` expert or teacher rows per prompt from the data; teacher rows are sampled
    live from ``teacher.model_path`` for prompts whose data has none."""
    if count == 0:
        return None
    responses = [getattr(r, source)[:count] for r in records]
    if source == "teacher" and config.teacher.model_path:
        missing = [i for i, r in enumerate(responses) if not r]
        if missing:
            live = roles.teacher_samples(
                [records[i] for i in missing], count, config.teacher.temperature, config.rollout.max_new_tokens, seed
            )
            for i, sampled in zip(missing, live):
                responses[i] = sampled
    rows = [(r, ids) for r, candidates in zip(records, responses) for ids in candidates]
    if not rows:
        return None
    return make_batch(
        group_id=[r.uid for r, _ in rows],
        source=[source] * len(rows),
        prompt_ids=[r.prompt_ids for r, _ in rows],
        response_ids=[ids for _, ids in rows],
        ground_truth=[r.ground_truth for r, _ in rows],
        data_source=[r.data_source for r, _ in rows],
    )


def group_metrics(batch: pa.RecordBatch) -> dict[str, float]:
    """Mean reward, advantage and response length per source, and the truncated fraction."""
    sources = np.asarray(batch.column("source").to_pylist())
    rewards = np.asarray(batch.column("reward").to_pylist(), dtype=float)
    advantages = np.asarray(batch.column("advantage").to_pylist(), dtype=float)
    lengths = np.asarray(batch.column("response_ids").value_lengths(), dtype=float)
    metrics = {"reward": float(rewards.mean()), "response_length": float(lengths.mean())}
    for source in SOURCES:
        chosen = sources == source
        if chosen.any():
            metrics[f"reward/{source}"] = float(rewards[chosen].mean())
            metrics[f"advantage/{source}"] = float(advantages[chosen].mean())
            metrics[f"response_length/{source}"] = float(lengths[chosen].mean())
    metrics["truncated_fraction"] = float(np.mean(batch.column("truncated").to_pylist()))
    return metrics


def step_advantages(batch: pa.RecordBatch, stage: StageConfig) -> np.ndarray:
    """``[rows]`` advantages of a scored batch: group-normalised rewards for GFT and GRPO, over
    each prompt's rows (or, ``advantage_groups: prompt_and_source``, each source's rows of it
    apart); 1 for SFT and DFT, which weigh every imitated token equally."""
    if stage.algorithm not in ("gft", "grpo"):
        return np.ones(batch.num_rows, dtype=np.float32)
    groups = batch.column("group_id").to_pylist()
    if stage.advantage_groups == "prompt_and_source":
        groups = [f"{group}/{source}" for group, source in zip(groups, batch.column("source").to_pylist())]
    return np.asarray(group_advantages(batch.column("reward").to_numpy(), groups))


class _PhaseClock:
    """Wall seconds of each phase of a step, logged as ``timing/<phase>_s``."""

    def __init__(self, metrics: dict[str, float]):
        self.metrics, self.last = metrics, time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.metrics[f"timing/{phase}_s"] = now - self.last
        self.last = now


def train_step(
    roles: Roles,
    stage: StageConfig,
    records: list[PromptRecord],
    config: RunConfig,
    seed: int,
    batch_dump: Path | None = None,
    measure_kl: bool = False,
) -> dict[str, float]:
    """One step: group -> rewards -> advantages -> learner update -> weights to the rollout.
    ``measure_kl``: log the KL to the stage's start policy even where the loss does not need it."""
    started, restarts = time.perf_counter(), roles.restarts
    parts, metrics = [], {}
    clock = _PhaseClock(metrics)
    for source in ("expert", "teacher"):
        part = off_policy_rows(records, source, getattr(stage.group, source), roles, config, seed)
        if part is not None:
            parts.append(part)
    if stage.group.self:
        params = SamplingParams(
            n=stage.group.self,
            temperature=config.rollout.temperature,
            top_p=config.rollout.top_p,
            max_new_tokens=config.rollout.max_new_tokens,
        )
        self_rows, rollout_metrics = roles.rollout(records, params, seed)
        parts.append(self_rows)
        metrics.update(rollout_metrics)
    clock.lap("rollout")
    # the rollout began by loading the last update's weights: that part is the weight sync
    metrics["timing/weight_sync_s"] = metrics.pop("weight_load_s", 0.0)
    metrics["timing/rollout_s"] -= metrics["timing/weight_sync_s"]
    batch, score_metrics = roles.score(concat_batches(parts))
    metrics.update(score_metrics)
    clock.lap("score")
    batch = with_column(batch, "advantage", step_advantages(batch, stage))
    metrics.update(group_metrics(batch))
    if batch_dump is not None:
        write_batch(batch, batch_dump)

    clock.lap("advantage")
    # only GRPO's ratio reads the pre-update log-probs; freezing them costs a forward a mini-batch
    update_metrics, weights = roles.update(ray.put(batch), objective_for(stage), stage.updates_per_batch,
                                           stage.micro_batch_tokens, measure_kl or stage.kl_coef > 0,
                                           stage.algorithm == "grpo")
    metrics.update(per_source_means(update_metrics))
    clock.lap("update")
    roles.sync_weights(int(metrics["policy_version"]), weights)  # taken up by the next rollout
    metrics["actor_restarts"] = roles.restarts - restarts
    metrics["step_time_s"] = time.perf_counter() - started
    return metrics


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
