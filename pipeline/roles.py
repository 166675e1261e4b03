"""Starting the Ray roles and talking to them: the driver's only door to the actors."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from pipeline.batch import concat_batches
from pipeline.config import RunConfig
from pipeline.data import PromptRecord
from pipeline.errors import RoleFailed
from pipeline.rewards.guard import RewardGuard
from workers.hf_generate import SamplingParams
from workers.learner import Learner
from workers.rollout import RolloutWorker
from workers.teacher import TeacherWorker

logger = logging.getLogger(__name__)
RESTART_TIMEOUT_S = 600  # a restarted actor reloads its model; a large one takes a while


def start_ray(config: RunConfig) -> None:
    """Join ``ray.address`` or start a local cluster bound to loopback."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    if config.ray.address:
        ray.init(address=config.ray.address, logging_level=logging.WARNING)
        return
    from ray._private import ray_constants  # Ray's private module: imported beside its one use

    # Learner and rollout never compute at the same time, so the roles may share the cores.
    needed = 1 + config.rollout.num_workers
    # On Linux Ray swaps even a loopback node address for the machine's outward one, and its
    # servers (GCS, raylet, object manager, workers, agents, metrics) then listen on every
    # interface. Its switch for single-machine clusters keeps the node on 127.0.0.1, so all of
    # them bind loopback; Ray reads it once at import, hence the change around this call only.
    cluster_mode, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    try:
        ray.init(
            num_cpus=max(config.ray.num_cpus or os.cpu_count() or 1, needed),
            include_dashboard=config.ray.dashboard,
            dashboard_host=config.ray.dashboard_host,
            logging_level=logging.WARNING,
            log_to_driver=True,
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode


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
        self.max_restarts = config.ray.max_actor_restarts
        self.restarts = 0  # actor processes that died and were restarted
        self.version = 0  # the policy version the rollout workers serve
        self.learner = None  # an eval-only job needs none
        if learner:
            self.learner = ray.remote(num_cpus=1)(Learner).remote(
                model_path, config.model.dtype, config.seed, num_threads=threads
            )
        # Ray restarts a dead rollout or teacher actor from its constructor; ``_call`` then
        # brings it back to the current policy and asks again. No task is retried by Ray itself:
        # a retry on a restarted rollout worker would sample with the base weights.
        restartable = ray.remote(num_cpus=1, max_restarts=self.max_restarts, max_task_retries=0)
        self.rollouts = [
            restartable(RolloutWorker).remote(
                model_path,
                config.rollout.backend,
                config.model.dtype,
                num_threads=max(1, threads // workers),
                max_num_seqs=config.rollout.max_num_seqs,
            )
            for _ in range(workers)
        ]
        self.teacher = ray.remote(num_cpus=0, max_restarts=self.max_restarts, max_task_retries=0)(TeacherWorker).remote(
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
        ray.get(self.learner.load.remote(model_path, version))
        self._call([(r, lambda w: w.load.remote(model_path, version)) for r in self.rollouts])
        self.version = version

    def sync_weights(self, version: int) -> None:
        """Learner weights into every rollout worker: put once in the object store, read by all."""
        weights = self.learner.state_dict.remote()
        self._call([(r, lambda w: w.set_weights.remote(weights, version)) for r in self.rollouts])
        self.version = version

    def _call(self, calls: list[tuple[ActorHandle, Callable[[ActorHandle], ray.ObjectRef]]]) -> list:
        """``ray.get`` of ``submit(actor)`` for each (actor, submit), all in flight at once. An actor
        whose process dies is restarted by Ray, given the current policy and asked again, so the
        step gets the same result it would have had: nothing is lost or sampled twice."""
        futures = [submit(actor) for actor, submit in calls]
        results = []
        for (actor, submit), future in zip(calls, futures):
            for attempt in range(self.max_restarts + 1):
                try:
                    results.append(ray.get(future))
                    break
                except RayActorError as err:
                    if attempt == self.max_restarts:
                        raise RoleFailed(f"an actor died {attempt + 1} times in one call: {err}") from err
                    self._recover(actor, err)
                    future = submit(actor)
        return results

    def _recover(self, actor: ActorHandle, err: RayActorError) -> None:
        logger.warning("an actor's process died (%s); waiting for Ray to restart it", type(err).__name__)
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            try:
                ray.get(actor.__ray_ready__.remote())
                break
            except ActorUnavailableError as busy:  # still restarting
                if time.monotonic() > deadline:
                    raise RoleFailed(f"an actor did not come back within {RESTART_TIMEOUT_S} s: {busy}") from busy
                time.sleep(0.2)
            except ActorDiedError as final:
                raise RoleFailed(f"an actor died and Ray did not restart it (ray.max_actor_restarts="
                                 f"{self.max_restarts}): {final}") from final
        self.restarts += 1
        if any(actor is r for r in self.rollouts) and self.learner is not None:
            # restarted from the base model: take the policy the learner holds, which is the one
            # the rollout workers served (they are synced after every update)
            ray.get(actor.set_weights.remote(self.learner.state_dict.remote(), self.version))

    def rollout(self, records: list[PromptRecord], params: SamplingParams, seed: int) -> tuple[pa.RecordBatch, dict]:
        """Self rows for ``records``, the prompts split evenly across the rollout workers."""
        chunks = [list(c) for c in np.array_split(np.arange(len(records)), len(self.rollouts)) if len(c)]
        calls = [
            (worker, lambda w, chunk=chunk, index=index: w.rollout.remote(
                [records[i] for i in chunk], params, seed + 7919 * index))
            for index, (worker, chunk) in enumerate(zip(self.rollouts, chunks))
        ]
        results = self._call(calls)
        batch = concat_batches([b for b, _ in results])
        return batch, _merge_rollout_metrics([m for _, m in results])

    def score(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, dict]:
        (result,) = self._call([(self.teacher, lambda t: t.score.remote(batch))])
        return result

    def teacher_samples(self, records: list[PromptRecord], n: int, temperature: float, max_new_tokens: int, seed: int):
        prompts = [r.prompt_ids for r in records]
        (result,) = self._call([(self.teacher, lambda t: t.sample.remote(prompts, n, temperature, max_new_tokens, seed))])
        return result
