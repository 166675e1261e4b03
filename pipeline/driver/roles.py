"""Starting the Ray roles and talking to them: the driver's only door to the actors."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from pipeline.core.batch import concat_batches
from pipeline.core.data import PromptRecord
from pipeline.core.errors import ConfigError, RoleFailed
from pipeline.core.resume import Progress
from pipeline.driver.placement import Seat, plan_placement
from pipeline.driver.rollout_env import check_rollout_environment, rollout_runtime_env
from pipeline.recipe.config import RunConfig
from pipeline.rewards.guard import RewardGuard
from workers.learner import Learner, UpdateSettings
from workers.output import ACTOR_LOG_ENV, point_output_at
from workers.rollout import PolicyMissing, RolloutWorker
from workers.sampling import EngineOptions, SamplingParams
from workers.teacher import TeacherWorker
from workers.weight_group import NotInWeightGroup, SyncPlan

logger = logging.getLogger(__name__)
SEATING_WARNING_S = 30  # how often a run waiting for cluster resources says so
RESTART_TIMEOUT_S = 600  # a restarted actor reloads its model; a large one takes a while
CONNECT_TIMEOUT_S = 10  # for a cluster's head to answer at ray.address
NODE_CHECK_S = 2.0  # while waiting on an actor, how often to look for lost nodes
# Ray declares a lost node dead some 13-30 s after the loss (its health checks): how long a learner
# call's failure waits to learn whether a node went with it, and how the learner ended
LEARNER_LOSS_WAIT_S = 30.0
LOCAL_ACTORS_PER_CORE = 4  # the roles time-share the cores; beyond this a machine only thrashes
# glibc's allocator hands tensors of more than a few MB out as fresh mmaps and returns freed
# memory at once, so every step page-faults its activations in anew (a tenth of the first learner
# steps went to the kernel). Keeping them in the heap makes a step reuse the last one's memory.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
# ... but for a large model the heap then keeps what its steps free: at Qwen2.5-0.5B's shape a
# sharded learner's update peaked at 9.2 GB with it and 6.1 GB without, and its resident memory
# never came down (docs/benchmarks.md). Only a model this small gets it.
ALLOCATOR_MAX_WEIGHTS_BYTES = 256 << 20


def allocator_env(model_path: str) -> dict[str, str]:
    """:data:`ALLOCATOR_ENV` for a model whose weights files are small, where a step is short
    enough for page faults to count; nothing for a larger one."""
    weights = sum(f.stat().st_size for f in Path(model_path).glob("*.safetensors"))
    return ALLOCATOR_ENV if weights <= ALLOCATOR_MAX_WEIGHTS_BYTES else {}


def check_cluster(config: RunConfig) -> None:
    """Before anything starts: the cluster a run is to join answers at its address, and a local
    one started here would not put more actor processes on each core than it can bear."""
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    key = "ray.address" if config.ray.address else "RAY_ADDRESS"
    if address:
        host, _, port = address.rpartition(":")
        if address == "auto" or "://" in address:  # Ray finds it, or it is a Ray client's: Ray's to check
            return
        if not host or not port.isdigit():
            raise ConfigError(f"{key}: {address!r} is not HOST:PORT (the head's GCS, 6379 by default)")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as err:
            raise ConfigError(f"{key}={address}: no Ray cluster answers there ({err.strerror or err}); "
                              "start its head with `ray start --head`, or leave ray.address unset for a local "
                              "cluster") from None
        return
    for role in ("learner", "rollout", "teacher"):
        if getattr(config, role).resources:
            raise ConfigError(f"{role}.resources: a local cluster started here has no custom resources; join a "
                              "cluster whose nodes were started with them (ray.address)")
    cores = config.ray.num_cpus or os.cpu_count() or 1
    actors = config.learner.num_workers + config.rollout.num_workers + 1  # and the teacher
    if actors > LOCAL_ACTORS_PER_CORE * cores:
        raise ConfigError(f"learner.num_workers + rollout.num_workers: {actors} actor processes, with the teacher, on "
                          f"a local cluster of {cores} cores (more than {LOCAL_ACTORS_PER_CORE} a core); ask for "
                          "fewer, or join a cluster with ray.address")


def start_ray(config: RunConfig, log_dir: Path | None = None) -> None:
    """Join ``ray.address``, else the cluster named by RAY_ADDRESS, else start a local cluster
    bound to loopback. Ray sets RAY_ADDRESS for the driver of a job (``gft submit``), whose run
    must use the cluster the job was submitted to. ``log_dir``: Ray's own messages in this
    process go to ``log_dir/ray.log`` instead of the console."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    check_rollout_environment(config)  # once per process; a run has checked before making its folder
    if ray.is_initialized():
        return
    check_cluster(config)
    logs = {"logging_level": logging.WARNING, "configure_logging": log_dir is None}
    quiet = _ray_output_to(log_dir / "ray.log") if log_dir is not None else contextlib.nullcontext()
    with quiet:
        _init_ray(config, logs)


def local_cluster_cpus(config: RunConfig) -> int:
    """The cores of the local cluster a run starts: the machine's (or ``ray.num_cpus``), or what
    the recipe's roles ask if that is more (they share the cores well, since the learner and
    the rollout never compute at once), rounded up: Ray takes whole numbers only."""
    needed = plan_placement(config).num_cpus + config.teacher.num_cpus
    return max(config.ray.num_cpus or os.cpu_count() or 1, math.ceil(needed))


@contextlib.contextmanager
def _on_loopback():
    """On Linux Ray swaps even a loopback address for the machine's outward one: a local cluster's
    servers (GCS, raylet, object manager, workers, agents, metrics) would listen on every
    interface, and a cluster whose nodes all bind 127.0.0.1 could not be joined. Its switch for
    single-machine clusters keeps 127.0.0.1 as it is; Ray reads it once at import, hence the
    change around one call only."""
    from ray._private import ray_constants  # Ray's private module: imported beside its one use

    cluster_mode, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode


def _init_ray(config: RunConfig, logs: dict) -> None:
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        host = address.rpartition(":")[0]
        with _on_loopback() if host in ("127.0.0.1", "localhost") else contextlib.nullcontext():
            ray.init(address=address, **logs)
        return
    with _on_loopback():
        ray.init(
            address="local",  # a new cluster, even where another one on this machine is Ray's "current" one
            num_cpus=local_cluster_cpus(config),
            include_dashboard=config.ray.dashboard,
            dashboard_host=config.ray.dashboard_host,
            log_to_driver=True,
            **logs,
        )


@contextlib.contextmanager
def _ray_output_to(path: Path):
    """While Ray starts, this process's output goes to ``path``, and with it that of the
    processes Ray starts meanwhile (its GCS, raylet and dashboard inherit it); Ray's logger
    writes there for good."""
    saved = os.dup(1), os.dup(2)
    point_output_at(path)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ray_logger = logging.getLogger("ray")
    ray_logger.addHandler(handler)
    ray_logger.propagate = False
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, kept in zip((1, 2), saved):
            os.dup2(kept, fd)
            os.close(kept)


@dataclass
class RolloutCall:
    """A rollout under way on the workers (:meth:`Roles.start_rollout`) and the policy it samples:
    a worker that dies before it answers is restarted, given that policy again (``weights``, or
    None on the collective path, which sends the learner's) and asked again."""

    calls: list[tuple[ActorHandle, Callable[[ActorHandle], ray.ObjectRef]]]
    futures: list[ray.ObjectRef]
    weights: ray.ObjectRef | None
    version: int
    sync_s: float | None


class _NodeWatch:
    """Called every NODE_CHECK_S while the driver waits on a rollout or teacher actor: once a
    node of the run's roles is reported dead, says which roles were on it (once), then allows
    ``ray.node_wait_s`` for the cluster to seat them again before the run stops."""

    def __init__(self, roles: Roles):
        self.roles, self.lost, self.deadline = roles, {}, 0.0

    def check(self) -> bool:
        """Whether a node is lost (and the wait for it still within its time)."""
        if not self.lost:
            self.lost = self.roles.lost_nodes()
            if not self.lost:
                return False
            self.deadline = time.monotonic() + self.roles.node_wait_s
            logger.warning("%s; waiting up to %g s (ray.node_wait_s) for the cluster to seat them again",
                           _told(self.lost), self.roles.node_wait_s)
        if time.monotonic() > self.deadline:
            raise RoleFailed(f"{_told(self.lost)}, and the cluster did not seat them again within "
                             f"ray.node_wait_s={self.roles.node_wait_s:g} s")
        return True


def _told(lost: dict[str, list[str]]) -> str:
    """``lost`` (node id -> roles), as a user reads it."""
    return "; ".join(f"node {node} was lost, with {', '.join(roles)} on it" for node, roles in lost.items())


def _node_id(actor: ActorHandle) -> ray.ObjectRef:
    return actor.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id())


def _merge_rollout_metrics(per_worker: list[dict]) -> dict:
    """Throughput adds up across workers; entropy is the mean over all their sampled tokens."""
    tokens = sum(m["rollout_tokens"] for m in per_worker)
    merged = {"rollout_tokens_per_s": sum(m["rollout_tokens_per_s"] for m in per_worker),
              "weight_load_s": max(m["weight_load_s"] for m in per_worker),  # the workers load at once
              "weight_load_bytes": sum(m["weight_load_bytes"] for m in per_worker)}
    if tokens and all("rollout_entropy" in m for m in per_worker):
        merged["rollout_entropy"] = sum(m["rollout_entropy"] * m["rollout_tokens"] for m in per_worker) / tokens
    return merged


class Roles:
    """The learners, the rollout workers and the teacher, behind one typed method per thing the
    driver asks of them. ``learner`` is rank 0 of the data-parallel learners: it alone writes and
    serves weights, but every call reaches every rank, since sharded ranks gather them together.
    A role lost for good raises :class:`RoleFailed`, never Ray's own errors."""

    def __init__(self, config: RunConfig, model_path: str, learner: bool = True, log_dir: Path | None = None):
        """``log_dir``: each actor's process writes its output to ``log_dir/<role>.log`` instead of
        the driver's console (``workers.output``); None: to the console, as Ray streams it."""
        RewardGuard(config.reward.function, extraction=config.reward.extraction).close()  # a broken file fails here
        self.max_restarts = config.ray.max_actor_restarts
        self.node_wait_s = config.ray.node_wait_s
        self.restarts = 0  # actor processes that died and were restarted
        self.version = 0  # the policy version the rollout workers serve
        self.pending: ray.ObjectRef | None = None  # that version's weights, from the last sync
        self.stale: set[int] = set()  # the workers (by index) that have yet to take them
        placement = plan_placement(config, with_learners=learner)
        self.group = placement_group(placement.bundles, strategy="PACK")
        self._wait_for_seats(placement.bundles)

        def logged(runtime_env: dict, name: str) -> dict:
            if log_dir is None:
                return runtime_env
            env_vars = {**runtime_env.get("env_vars", {}), ACTOR_LOG_ENV: str(log_dir / f"{name}.log")}
            return {**runtime_env, "env_vars": env_vars}

        allocator = {"env_vars": allocator_env(model_path)}

        def seated(seat: Seat, name: str, runtime_env: dict = allocator, **options):
            strategy = PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=seat.bundle)
            return ray.remote(num_cpus=seat.num_cpus, num_gpus=seat.num_gpus, resources=seat.resources,
                              scheduling_strategy=strategy, runtime_env=logged(runtime_env, name), **options)

        threads = config.ray.num_cpus or os.cpu_count() or 1  # torch threads, split among the actors
        self.learners = [  # an eval-only job has none
            seated(seat, f"learner-{rank}")(Learner).remote(
                model_path, config.model.dtype, config.seed,
                num_threads=config.learner.num_threads or max(1, threads // len(placement.learners)),
                gradient_checkpointing=config.learner.gradient_checkpointing,
                return_freed_memory=not allocator["env_vars"])
            for rank, seat in enumerate(placement.learners)
        ]
        self.learner = self.learners[0] if self.learners else None
        # Ray restarts a dead rollout or teacher actor from its constructor; ``_call`` then
        # brings it back to the current policy and asks again. No task is retried by Ray itself:
        # a retry on a restarted rollout worker would sample with the base weights.
        rollout = config.rollout
        colocated = config.ray.colocate and bool(self.learners) and rollout.num_gpus > 0  # sharing their GPUs
        engine_options = EngineOptions(
            dtype=config.model.dtype, max_num_seqs=rollout.max_num_seqs, seed=config.seed, sleep_when_idle=colocated,
            gpu_memory_utilization=rollout.gpu_memory_utilization, kv_cache_gib=rollout.kv_cache_gib)
        self.rollouts = [
            seated(seat, f"rollout-{index}", rollout_runtime_env(config, allocator["env_vars"]), max_restarts=self.max_restarts,
                   max_task_retries=0)(RolloutWorker).remote(
                model_path, rollout.backend, engine_options,
                num_threads=rollout.num_threads or max(1, threads // len(placement.rollouts)))
            for index, seat in enumerate(placement.rollouts)
        ]
        teacher = config.teacher
        self.teacher = ray.remote(num_cpus=teacher.num_cpus, num_gpus=teacher.num_gpus, resources=teacher.resources,
                                  max_restarts=self.max_restarts, max_task_retries=0,
                                  runtime_env=logged(allocator, "teacher"))(TeacherWorker).remote(
            model_path, config.reward.function, teacher.model_path, num_threads=1,
            reward_timeout_s=config.reward.timeout_s, reward_workers=config.reward.num_workers,
            answer_extraction=config.reward.extraction)
        # surface a bad model path or reward file now, not at the first step
        ray.get([actor.__ray_ready__.remote() for actor in [self.teacher, *self.rollouts, *self.learners]])
        self._report_rollout(colocated)
        self._locate()
        one_node = len(set(self.nodes["learners"][:1] + self.nodes["rollouts"])) == 1
        # weights reach rollout workers on the learner's node through its shared memory; but that
        # block, rewritten at each publication, holds one version: rollouts started more than one
        # update ahead each keep a version of their own, in the object store
        self.shared_memory = one_node and config.rollout.max_staleness <= 1
        if len(self.learners) > 1:
            address, port = ray.get(self.learner.rendezvous.remote())
            world = len(self.learners)
            ray.get([rank.join_group.remote(i, world, address, port, config.learner.fsdp)
                     for i, rank in enumerate(self.learners)])
        # weights broadcast in a group of their own: where asked, or where shared memory cannot reach
        self.sync_plan: SyncPlan | None = None
        sync = config.rollout.weight_sync
        if self.learner is not None and (sync == "collective" or (sync == "auto" and not one_node
                                                                  and config.rollout.max_staleness <= 1)):
            self.sync_plan = ray.get(self.learner.weight_plan.remote(config.rollout.weight_bucket_mb << 20))
            self._form_weight_group()
        self.weight_sync = "collective" if self.sync_plan is not None else "shared_memory" if self.shared_memory \
            else "object_store"  # (an eval job's workers load the checkpoint itself)
        logger.info("roles on nodes %s; weights reach the rollout by %s", self.nodes, self.weight_sync)

    def _report_rollout(self, colocated: bool) -> None:
        """Say what the rollout runs on; a colocated engine that could sleep but cannot (no sleep
        mode on its platform) keeps its memory while the learner trains, which is worth a warning."""
        info = ray.get(self.rollouts[0].describe.remote())
        logger.info("rollout: %d %s workers, %s (%s); sleep between calls: %s", len(self.rollouts), info["backend"],
                    info["engine"], info["python"], {None: "n/a", True: "yes", False: "no"}[info["sleeps"]])
        if colocated and info["sleeps"] is False:
            logger.warning("the rollout (%s) shares the learners' GPUs, but cannot sleep there: its weights and KV "
                           "cache stay in memory while the learner trains", info["engine"])

    def _wait_for_seats(self, bundles: list[dict[str, float]]) -> None:
        """Wait for the cluster to reserve the placement group, saying what is missing while it
        cannot (an autoscaling cluster may yet add the nodes)."""
        ready = self.group.ready()
        while not ray.wait([ready], timeout=SEATING_WARNING_S)[0]:
            needed = {key: sum(b.get(key, 0.0) for b in bundles) for key in ("CPU", "GPU")}
            logger.warning("waiting for the cluster to seat the roles: they need %s in bundles %s; the cluster "
                           "has %s in all", needed, bundles, ray.cluster_resources())
        ray.get(ready)

    def close(self) -> None:
        """End the actors and free their placement group (Ray keeps a group until it is removed)."""
        try:  # free rank 0's shared-memory block; a dead learner's resource tracker unlinked its own
            ray.get([rank.close.remote() for rank in self.learners], timeout=60)
        except (RayActorError, GetTimeoutError):
            pass
        for actor in [self.teacher, *self.rollouts, *self.learners]:
            ray.kill(actor)
        remove_placement_group(self.group)

    def _on_learners(self, call: Callable[[ActorHandle], ray.ObjectRef]):
        """``call`` on every learner rank at once (sharded ranks gather and write together); rank
        0's answer."""
        return self._learners_get([call(rank) for rank in self.learners])[0]

    def _learners_get(self, futures: list[ray.ObjectRef]) -> list:
        """``ray.get`` of learner calls. A learner's state cannot be rebuilt: its process lost ends
        the run, as :class:`RoleFailed`, naming the node where that was lost with it."""
        try:
            return ray.get(futures)
        except RayActorError as err:
            raise RoleFailed(self._learner_loss(err)) from err

    def _learner_loss(self, err: RayActorError) -> str:
        """What ended a learner call, as a user reads it. Ray's first word is often only that the
        connection went (ActorUnavailableError); how the learner ended (Ray's exit detail) and
        whether a node of the run went with it are known seconds later. While another role is
        silent too, a node may be going: that is waited for, up to LEARNER_LOSS_WAIT_S."""
        deadline, cause = time.monotonic() + LEARNER_LOSS_WAIT_S, err
        while True:
            for rank in self.learners:
                try:
                    ray.get(rank.__ray_ready__.remote(), timeout=NODE_CHECK_S)
                except ActorDiedError as died:  # Ray's account of its end
                    cause = died
                except (RayActorError, GetTimeoutError):  # no word yet, or busy
                    pass
            lost = self.lost_nodes()
            if any(role.startswith("learner") for roles in lost.values() for role in roles):
                return _told(lost)
            if lost or time.monotonic() > deadline or not self._any_silent([*self.rollouts, self.teacher]):
                break
        died = f"a learner's process died: {cause}"
        return f"{_told(lost)}; {died}" if lost else died

    @staticmethod
    def _any_silent(actors: list[ActorHandle]) -> bool:
        """Whether one of ``actors`` does not answer within NODE_CHECK_S (its node may be lost)."""
        try:
            ray.get([actor.__ray_ready__.remote() for actor in actors], timeout=NODE_CHECK_S)
            return False
        except (RayActorError, GetTimeoutError):
            return True

    def load_policy(self, model_path: str, version: int) -> None:
        """Every role serves the checkpoint in ``model_path`` as policy ``version``."""
        self._on_learners(lambda rank: rank.load.remote(model_path, version))
        self._call([(r, lambda w: w.load.remote(model_path, version)) for r in self.rollouts])
        self.version, self.pending, self.stale = version, None, set()

    def start_stage(self, reference_path: str | None, lr: float, weight_decay: float, max_grad_norm: float) -> None:
        """A fresh optimizer on every learner rank, and the stage's reference policy (None: none)."""
        self._on_learners(lambda rank: rank.start_stage.remote(reference_path, lr, weight_decay, max_grad_norm))

    def restore(self, resume_point: Path) -> None:
        """The optimizer state and RNG of ``resume_point``, after :meth:`start_stage`."""
        self._on_learners(lambda rank: rank.restore.remote(str(resume_point)))

    def set_lr(self, lr: float) -> None:
        self._on_learners(lambda rank: rank.set_lr.remote(lr))

    def save_checkpoint(self, folder: Path) -> Path:
        """The policy as a Hugging Face folder at ``folder``."""
        return Path(self._on_learners(lambda rank: rank.save.remote(str(folder))))

    def save_resume_point(self, run_dir: Path, progress: Progress, extra_files: dict[str, bytes] | None = None) -> Path:
        """A resume point of ``run_dir`` holding the learner's whole state, ``progress`` and the
        driver's ``extra_files`` (name -> contents)."""
        return Path(self._on_learners(lambda rank: rank.save_resume_point.remote(str(run_dir), progress, extra_files)))

    def update(self, batch: pa.RecordBatch, settings: UpdateSettings, defer_weights: bool = False) -> dict[str, float]:
        """Train every learner rank on ``batch`` (put once in the object store); rank 0's metrics.
        The new weights, asked for right behind the update on every rank so that they are on
        their way while the metrics come back, become the rollout's policy at its next call
        (:meth:`start_rollout`): no round trip of a call of their own. The learner writes its
        shared block again only after an update, which comes after those rollouts.
        ``defer_weights``: rollouts may be under way on earlier weights (rollout.max_staleness >= 1):
        the new ones are asked for when the next rollout starts instead, once (on the shared-memory
        path, which holds one version) the one before it has been waited for."""
        shared = ray.put(batch)
        metrics = [rank.update.remote(shared, settings) for rank in self.learners]
        if self.sync_plan is not None or defer_weights:  # sent when the next rollout starts
            metrics = self._learners_get(metrics)[0]
            self.version, self.stale = int(metrics["policy_version"]), set(range(len(self.rollouts)))
            self.pending = None
            return metrics
        weights = self._request_weights()
        metrics = self._learners_get(metrics)[0]
        self.pending, *others = weights
        self._learners_get(others)
        self.version, self.stale = int(metrics["policy_version"]), set(range(len(self.rollouts)))
        return metrics

    def _request_weights(self) -> list[ray.ObjectRef]:
        """Every rank's answer to ``rollout_weights``: rank 0's full weights (in its node's shared
        memory, or put once in the object store for every reader), then nothing from the others
        (sharded ranks gather them together)."""
        return [rank.rollout_weights.remote(self.shared_memory) for rank in self.learners]

    def _call(self, calls: list[tuple[ActorHandle, Callable[[ActorHandle], ray.ObjectRef]]]) -> list:
        """``ray.get`` of ``submit(actor)`` for each (actor, submit), all in flight at once (:meth:`_finish`)."""
        return self._finish(calls, [submit(actor) for actor, submit in calls])

    def _finish(self, calls: list[tuple[ActorHandle, Callable[[ActorHandle], ray.ObjectRef]]],
                futures: list[ray.ObjectRef], policy: RolloutCall | None = None) -> list:
        """The results of ``futures``, the calls ``calls`` submitted. An actor whose process dies
        is restarted by Ray, given the policy (``policy``'s, else the current one) and asked
        again, so the step gets the same result it would have had: nothing is lost or sampled twice."""
        futures, results = list(futures), []
        try:
            for index, (actor, submit) in enumerate(calls):
                for attempt in range(self.max_restarts + 1):
                    try:
                        results.append(self._await(futures[index]))
                        break
                    except (RayActorError, PolicyMissing) as err:  # died in the call, or before it
                        if attempt == self.max_restarts:
                            raise RoleFailed(f"an actor died {attempt + 1} times in one call: {err}") from err
                        self._recover(actor, err, policy)
                        futures[index] = submit(actor)
        except Exception as err:
            # the other calls fail as a rule for the same reason: read their errors too, or Ray logs
            # each with its traceback as unhandled; but not those a lost node keeps waiting
            wait_s = 0 if isinstance(err, RoleFailed) else RESTART_TIMEOUT_S
            for future in ray.wait(futures, num_returns=len(futures), timeout=wait_s)[0]:
                with contextlib.suppress(Exception):
                    ray.get(future)
            if isinstance(err, RayActorError):  # died again while it was being brought back
                raise RoleFailed(f"an actor died while it was being restarted: {err}") from err
            raise
        return results

    def _recover(self, actor: ActorHandle, err: RayActorError, policy: RolloutCall | None = None) -> None:
        """Wait for Ray to restart ``actor`` and, a rollout worker, bring it to the policy it serves:
        ``policy``'s (a rollout started before the update that followed it) or the current one."""
        logger.warning("an actor's process died (%s); waiting for Ray to restart it", type(err).__name__)
        self._wait_restarted(actor)
        if any(actor is r for r in self.rollouts) and self.sync_plan is not None:
            # restarted from the base model, and out of the weight group: a group anew, and the
            # policy the others serve (the learner's weights: a sync is sent only between updates);
            # a rollout started before the last update is asked again on these newer weights
            self._form_weight_group()
            self.stale = set(range(len(self.rollouts)))
            self._broadcast_weights()
            if policy is not None:
                policy.version = self.version
        elif any(actor is r for r in self.rollouts) and self.learner is not None:
            # restarted from the base model: take the policy the others serve, the last sync's
            # weights (not asked anew: the learner must not rewrite its shared block while the
            # others may be reading it), else the learner's, which are the stage's start
            if policy is not None and policy.weights is not None:
                weights, version, others = policy.weights, policy.version, []
            else:
                (weights, *others), version = ([self.pending] if self.pending is not None else
                                               self._request_weights()), self.version
            ray.get(actor.set_weights.remote(weights, version))
            self._learners_get(others)

    def _wait_restarted(self, actor: ActorHandle) -> None:
        """Until Ray has restarted ``actor``: within RESTART_TIMEOUT_S as a rule (a large model
        loads), or as :class:`_NodeWatch` allows where a node of the run is gone."""
        deadline, watch = time.monotonic() + RESTART_TIMEOUT_S, _NodeWatch(self)
        ready = actor.__ray_ready__.remote()
        while True:
            try:
                ray.get(ready, timeout=NODE_CHECK_S)
                self.restarts += 1
                self._locate()
                return
            except GetTimeoutError:  # not seated yet: a lost node's resources are missing, or a model loads
                pass
            except ActorUnavailableError:  # restarting: ask again
                ready = actor.__ray_ready__.remote()
            except ActorDiedError as final:
                raise RoleFailed(f"an actor died and Ray did not restart it (ray.max_actor_restarts="
                                 f"{self.max_restarts}): {final}") from final
            if not watch.check() and time.monotonic() > deadline:
                raise RoleFailed(f"an actor did not come back within {RESTART_TIMEOUT_S} s")

    def _await(self, future: ray.ObjectRef):
        """``ray.get`` of a rollout or teacher call. A call to an actor whose node is gone waits,
        queued, until Ray seats the actor again; meanwhile the run says so (:class:`_NodeWatch`)."""
        watch = _NodeWatch(self)
        while not ray.wait([future], timeout=NODE_CHECK_S)[0]:
            watch.check()
        return ray.get(future)

    def _locate(self) -> None:
        """Each role's Ray node id, asked of the actors: at the start, and after one is restarted
        (on another node, if its own was lost)."""
        nodes = ray.get([_node_id(actor) for actor in [*self.learners, *self.rollouts, self.teacher]])
        self.nodes = {"learners": nodes[:len(self.learners)], "rollouts": nodes[len(self.learners):-1],
                      "teacher": nodes[-1]}

    def lost_nodes(self) -> dict[str, list[str]]:
        """The nodes this run's roles were placed on that Ray reports dead, each with those roles."""
        alive = {node["NodeID"]: node["Alive"] for node in ray.nodes()}
        placed = [*((f"learner-{i}", n) for i, n in enumerate(self.nodes["learners"])),
                  *((f"rollout-{i}", n) for i, n in enumerate(self.nodes["rollouts"])), ("teacher", self.nodes["teacher"])]
        lost: dict[str, list[str]] = {}
        for role, node in placed:
            if not alive.get(node, False):
                lost.setdefault(node, []).append(role)
        return lost

    def rollout(self, records: list[PromptRecord], params: SamplingParams, seed: int) -> tuple[pa.RecordBatch, dict]:
        """Self rows for ``records``, the prompts split evenly across the rollout workers."""
        return self.finish_rollout(self.start_rollout(records, params, seed))

    def start_rollout(self, records: list[PromptRecord], params: SamplingParams, seed: int,
                      ahead: bool = False) -> RolloutCall:
        """Start sampling ``records`` on the current policy, after sending it to the workers that
        lack it; :meth:`finish_rollout` waits for the rows. ``ahead``: an update will run before
        the rows are waited for, so the policy is kept in hand (a worker restarted after that
        update is given it again, not the newer one)."""
        sync_s = self._broadcast_weights() if self.sync_plan is not None and self.stale else None
        if self.sync_plan is None and self.pending is None and (self.stale or ahead):
            self.pending, *others = self._request_weights()
            self._learners_get(others)
        chunks = [list(c) for c in np.array_split(np.arange(len(records)), len(self.rollouts)) if len(c)]
        call = RolloutCall([], [], self.pending if self.sync_plan is None else None, self.version, sync_s)
        for index, (worker, chunk) in enumerate(zip(self.rollouts, chunks)):
            sent = call.weights if index in self.stale else None

            def submit(w, chunk=chunk, index=index, sent=sent):  # again after a restart: that policy's version
                return w.rollout.remote([records[i] for i in chunk], params, seed + 7919 * index, sent, call.version)

            call.calls.append((worker, submit))
            call.futures.append(submit(worker))
        self.stale -= set(range(len(call.calls)))  # each call takes its weights before it samples
        return call

    def finish_rollout(self, call: RolloutCall) -> tuple[pa.RecordBatch, dict]:
        """The rows (and the workers' metrics) of a rollout :meth:`start_rollout` started."""
        results = self._finish(call.calls, call.futures, call)
        batch = concat_batches([b for b, _ in results])
        metrics = _merge_rollout_metrics([m for _, m in results])
        if call.sync_s is not None:
            metrics.update(weight_load_s=call.sync_s, weight_load_bytes=self.sync_plan.nbytes * len(self.rollouts))
        return batch, metrics

    def _form_weight_group(self) -> None:
        """Learner rank 0 and every rollout worker join a weight group anew (``workers.weight_group``),
        leaving the one they were in."""
        members = [self.learner, *self.rollouts]
        for member in members:
            with contextlib.suppress(RayActorError):  # one that died: its process took its part along
                ray.get(member.leave_weight_group.remote())
        address, port = ray.get(self.learner.rendezvous.remote())
        joins = [self.learner.join_weight_group.remote(address, port, len(members))]
        joins += [worker.join_weight_group.remote(address, port, 1 + index, len(members))
                  for index, worker in enumerate(self.rollouts)]
        self._learners_get(joins)

    def _broadcast_weights(self) -> float:
        """Every rollout worker takes the learner's weights from the weight group at once, as the
        learner ranks send them; the seconds that took. A worker lost meanwhile fails the others'
        part too: it is restarted, the group made anew and the weights sent again."""
        started, attempts = time.perf_counter(), 0
        while True:
            sends = [rank.broadcast_weights.remote(self.sync_plan) for rank in self.learners]
            receives = [worker.receive_weights.remote(self.sync_plan, self.version) for worker in self.rollouts]
            lost, restarted, errors = [], 0, []
            for worker, future in zip(self.rollouts, receives):
                try:
                    self._await(future)
                except RayActorError:
                    lost.append(worker)
                except NotInWeightGroup:  # restarted by Ray between two calls: out of the group
                    restarted += 1
                except RayTaskError as err:  # as a rule, a peer went and broke the group for everyone
                    errors.append(err)
            try:
                self._learners_get(sends)
            except RayTaskError as err:
                errors.append(err)
            if not lost and not restarted and errors:  # no peer went: a fault of the sync itself
                raise errors[0]
            if not lost and not restarted:
                self.stale = set()
                return time.perf_counter() - started
            attempts += 1
            if attempts > self.max_restarts:
                raise RoleFailed(f"a rollout worker died {attempts} times while taking the weights")
            self.restarts += restarted
            if restarted:
                self._locate()
            for worker in lost:
                logger.warning("a rollout worker died while it took the weights; waiting for Ray to restart it")
                self._wait_restarted(worker)
            self._form_weight_group()

    def score(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, dict]:
        (result,) = self._call([(self.teacher, lambda t: t.score.remote(batch))])
        return result

    def teacher_samples(self, records: list[PromptRecord], n: int, temperature: float, max_new_tokens: int, seed: int):
        prompts = [r.prompt_ids for r in records]
        (result,) = self._call([(self.teacher, lambda t: t.sample.remote(prompts, n, temperature, max_new_tokens, seed))])
        return result
