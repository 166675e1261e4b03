"""Starting the Ray roles and talking to them: the driver's only door to the actors."""

from __future__ import annotations

import logging
import os

import numpy as np
import pyarrow as pa
import ray

from pipeline.batch import concat_batches
from pipeline.config import RunConfig
from pipeline.data import PromptRecord
from pipeline.rewards.guard import RewardGuard
from workers.hf_generate import SamplingParams
from workers.learner import Learner
from workers.rollout import RolloutWorker
from workers.teacher import TeacherWorker


def start_ray(config: RunConfig) -> None:
    """Join ``ray.address`` or start a local cluster bound to loopback."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    if config.ray.address:
        ray.init(address=config.ray.address, logging_level=logging.WARNING)
        return
    # Learner and rollout never compute at the same time, so the roles may share the cores.
    needed = 1 + config.rollout.num_workers
    ray.init(
        num_cpus=max(config.ray.num_cpus or os.cpu_count() or 1, needed),
        include_dashboard=config.ray.dashboard,
        dashboard_host=config.ray.dashboard_host,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )


def _merge_rollout_metrics(per_worker: list[dict]) -> dict:
    """Throughput adds up across workers; entropy is the mean over all their sampled tokens."""
    tokens = sum(m["rollout_tokens"] for m in per_worker)
    merged = {"rollout_tokens_per_s": sum(m["rollout_tokens_per_s"] for m in per_worker)}
    if tokens and all("rollout_entropy" in m for m in per_worker):
        merged["rollout_entropy"] = sum(m["rollout_entropy"] * m["rollout_tokens"] for m in per_worker) / tokens
    return merged


class Roles:
    """Handles to the learner, the rollout workers and the teacher, with the fan-out logic."""

    def __init__(self, config: RunConfig, model_path: str, learner: bool = True):
        RewardGuard(config.reward.function).close()  # a broken reward file fails here, in plain words
        threads = os.cpu_count() or 1
        workers = config.rollout.num_workers
        self.learner = None  # an eval-only job needs none
        if learner:
            self.learner = ray.remote(num_cpus=1)(Learner).remote(
                model_path, config.model.dtype, config.seed, num_threads=threads
            )
        self.rollouts = [
            ray.remote(num_cpus=1)(RolloutWorker).remote(
                model_path,
                config.rollout.backend,
                config.model.dtype,
                num_threads=max(1, threads // workers),
                max_num_seqs=config.rollout.max_num_seqs,
            )
            for _ in range(workers)
        ]
        self.teacher = ray.remote(num_cpus=0)(TeacherWorker).remote(
            model_path,
            config.reward.function,
            config.teacher.model_path,
            num_threads=1,
            reward_timeout_s=config.reward.timeout_s,
            reward_workers=config.reward.num_workers,
        )
        # surface a bad model path or reward file now, not at the first step
        actors = [self.teacher, *self.rollouts] + ([self.learner] if learner else [])
        ray.get([actor.__ray_ready__.remote() for actor in actors])

    def load_policy(self, model_path: str, version: int) -> None:
        ray.get([self.learner.load.remote(model_path)] + [r.load.remote(model_path, version) for r in self.rollouts])

    def sync_weights(self, version: int) -> None:
        """Learner weights into every rollout worker: put once in the object store, read by all."""
        weights = self.learner.state_dict.remote()
        ray.get([r.set_weights.remote(weights, version) for r in self.rollouts])

    def rollout(self, records: list[PromptRecord], params: SamplingParams, seed: int) -> tuple[pa.RecordBatch, dict]:
        """Self rows for ``records``, the prompts split evenly across the rollout workers."""
        chunks = [list(c) for c in np.array_split(np.arange(len(records)), len(self.rollouts)) if len(c)]
        futures = [
            worker.rollout.remote([records[i] for i in chunk], params, seed + 7919 * index)
            for index, (worker, chunk) in enumerate(zip(self.rollouts, chunks))
        ]
        results = ray.get(futures)
        batch = concat_batches([b for b, _ in results])
        return batch, _merge_rollout_metrics([m for _, m in results])

    def score(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, dict]:
        return ray.get(self.teacher.score.remote(batch))

    def teacher_samples(self, records: list[PromptRecord], n: int, temperature: float, max_new_tokens: int, seed: int):
        return ray.get(
            self.teacher.sample.remote([r.prompt_ids for r in records], n, temperature, max_new_tokens, seed)
        )
