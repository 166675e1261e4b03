"""What one training step does: build the groups, score them, weigh them, update.

What sets the algorithms apart (the sources of a group, group advantages or none, the log-probs
the loss reads, the loss) is read from their spec, ``pipeline.recipe.algorithms``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.core.advantages import group_advantages
from pipeline.core.batch import (
    OFF_POLICY_SOURCES,
    SOURCES,
    concat_batches,
    make_batch,
    with_column,
    write_batch,
)
from pipeline.core.data import PromptRecord
from pipeline.core.errors import TrainingStopped
from pipeline.core.losses import per_source_means
from pipeline.driver.roles import Roles
from pipeline.recipe.algorithms import ALGORITHMS, objective_for
from pipeline.recipe.config import RunConfig, StageConfig
from workers.learner import UpdateSettings
from workers.sampling import SamplingParams


def off_policy_rows(records: list[PromptRecord], source: str, count: int, roles: Roles, config: RunConfig,
                    seed: int) -> tuple[pa.RecordBatch | None, int]:
    """Up to ``count`` expert or teacher rows per prompt from the data, teacher rows sampled live
    from ``teacher.model_path`` for prompts whose data has none; and how many prompts got fewer
    than ``count`` (``data.short_groups=allow`` lets such prompts through)."""
    if count == 0:
        return None, 0
    responses = [getattr(r, source)[:count] for r in records]
    if source == "teacher" and config.teacher.model_path:
        missing = [i for i, r in enumerate(responses) if not r]
        if missing:
            live = roles.teacher_samples(
                [records[i] for i in missing], count, config.teacher.temperature, config.rollout.max_new_tokens, seed
            )
            for i, sampled in zip(missing, live):
                responses[i] = sampled
    short = sum(len(candidates) < count for candidates in responses)
    rows = [(r, ids) for r, candidates in zip(records, responses) for ids in candidates]
    if not rows:
        return None, short
    return make_batch(
        group_id=[r.uid for r, _ in rows],
        source=[source] * len(rows),
        prompt_ids=[r.prompt_ids for r, _ in rows],
        response_ids=[ids for _, ids in rows],
        ground_truth=[r.ground_truth for r, _ in rows],
        data_source=[r.data_source for r, _ in rows],
    ), short


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
    """``[rows]`` advantages of a scored batch: for an algorithm with group advantages (GFT,
    GRPO, CHORD), rewards normalised over each prompt's rows (or, ``advantage_groups:
    prompt_and_source``, each source's rows of it apart; CHORD always); otherwise 1 (SFT and DFT
    weigh every imitated token equally)."""
    algorithm = ALGORITHMS[stage.algorithm]
    if not algorithm.group_advantages:
        return np.ones(batch.num_rows, dtype=np.float32)
    groups = batch.column("group_id").to_pylist()
    if (algorithm.advantage_groups or stage.advantage_groups) == "prompt_and_source":
        groups = [f"{group}/{source}" for group, source in zip(groups, batch.column("source").to_pylist())]
    return np.asarray(group_advantages(batch.column("reward").to_numpy(), groups))


def self_sampling(stage: StageConfig, config: RunConfig) -> SamplingParams:
    """How a step of ``stage`` samples its self rows."""
    return SamplingParams(n=stage.group.self, temperature=config.rollout.temperature, top_p=config.rollout.top_p,
                          max_new_tokens=config.rollout.max_new_tokens)


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
    sampled: Callable[[], tuple[pa.RecordBatch, dict]] | None = None,
    start_next: Callable[[], None] | None = None,
    step: int = 1,
) -> dict[str, float]:
    """One step: group -> rewards -> advantages -> learner update -> weights to the rollout.
    ``measure_kl``: log the KL to the stage's start policy even where the loss does not need it.
    ``sampled``: this step's self rows, sampled while steps before it trained (rollout.max_staleness
    >= 1), instead of sampling them now. ``start_next``: called once the step has its rows: starts
    later steps' rollouts, which then sample on the weights from before this step's update.
    ``step``: the step's number in its stage (1-based), for an objective that changes over it."""
    started, restarts = time.perf_counter(), roles.restarts
    parts, metrics = [], {}
    clock = _PhaseClock(metrics)
    for source in OFF_POLICY_SOURCES:
        part, short = off_policy_rows(records, source, getattr(stage.group, source), roles, config, seed)
        if part is not None:
            parts.append(part)
        if config.data.short_groups == "allow" and getattr(stage.group, source):
            metrics[f"short_groups/{source}"] = short
    if stage.group.self:
        self_rows, rollout_metrics = sampled() if sampled is not None else \
            roles.rollout(records, self_sampling(stage, config), seed)
        parts.append(self_rows)
        metrics.update(rollout_metrics)
        # updates between the weights that sampled the rows and those about to be updated
        metrics["staleness"] = float(roles.version - min(self_rows.column("policy_version").to_pylist()))
    if not parts:
        raise TrainingStopped(f"stage {stage.name}: none of the step's {len(records)} prompts has an expert or teacher "
                              "candidate, and the stage samples no self rows: there is nothing to train on "
                              "(data.short_groups=allow let these prompts through)")
    clock.lap("rollout")  # sampled ahead: what the step waited for it, the rest hidden behind the update before
    # the rollout began by loading the last update's weights: that part is the weight sync
    metrics["timing/weight_sync_s"] = metrics.pop("weight_load_s", 0.0)
    metrics["weight_sync_bytes"] = metrics.pop("weight_load_bytes", 0)  # what the rollout workers read, together
    if sampled is None:
        metrics["timing/rollout_s"] -= metrics["timing/weight_sync_s"]
    ahead = config.rollout.max_staleness > 0
    if start_next is not None:
        start_next()
        clock.lap("start_next")
    batch, score_metrics = roles.score(concat_batches(parts))
    metrics.update(score_metrics)
    clock.lap("score")
    batch = with_column(batch, "advantage", step_advantages(batch, stage))
    metrics.update(group_metrics(batch))
    if batch_dump is not None:
        write_batch(batch, batch_dump)

    clock.lap("advantage")
    algorithm = ALGORITHMS[stage.algorithm]
    settings = UpdateSettings(objective_for(stage, step), stage.updates_per_batch, stage.micro_batch_tokens,
                              with_reference=measure_kl or algorithm.needs_reference(stage),
                              with_old_log_probs=algorithm.old_log_probs,
                              with_behaviour=ahead and algorithm.old_log_probs)
    # its weights reach the next rollout; one under way already samples on the ones before
    metrics.update(per_source_means(roles.update(batch, settings, defer_weights=ahead)))
    clock.lap("update")
    metrics["actor_restarts"] = roles.restarts - restarts
    metrics["step_time_s"] = time.perf_counter() - started
    return metrics
