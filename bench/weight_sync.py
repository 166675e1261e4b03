"""A weight sync's time and extra memory by each way it travels, on Qwen2.5-0.5B's shape.

    python -m bench.weight_sync [--quick] [--syncs 3] [--threads N]

For each way (``shared_memory``: the learner's node's /dev/shm; ``object_store``: one float32
buffer through Ray's object store; ``collective``: a broadcast in a weight group, gloo here, in
buckets of 256 and of 32 MiB; ``workers.weights``, ``workers.weight_group``), a fresh learner actor
and a fresh hf rollout worker actor load random weights of Qwen2.5-0.5B's shape (494 M
parameters, float32: the compute dtype on CPU) and the learner sends them ``--syncs`` times.
Reported: the bytes one sync moves to the worker, the median seconds from the learner's first
step to the worker holding the weights, and each process's peak resident memory during the
syncs above what it held before the first, every weight read once by then (Linux's high-water
mark, reset before the first sync: shared memory a process maps counts, so the one shared block
counts in both processes, and it is held between syncs).
``--quick`` uses the embedded tiny model.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import ray
import torch

from bench.common import arguments, embedded_assets, qwen_shaped_model, report, workdir
from pipeline.driver.roles import start_ray
from pipeline.recipe.config import RunConfig
from workers.learner import Learner
from workers.rollout import RolloutWorker

MIB = 1 << 20
WAYS = [("shared_memory", None), ("object_store", None), ("collective", 256), ("collective", 32)]


def _memory(_actor) -> dict[str, int]:
    """This process's resident and peak resident memory, in bytes."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}


def _settle(actor) -> None:
    """Read every weight once (transformers maps a checkpoint's weights, which become resident
    only when read: the first sync would count them), then reset the high-water mark to the
    current size."""
    model = actor.model if isinstance(actor, Learner) else actor.engine.model
    with torch.no_grad():
        sum(float(p.sum()) for p in model.parameters())
    Path("/proc/self/clear_refs").write_text("5")


def measure(model: str, way: str, bucket_mib: int | None, syncs: int, threads: int) -> list:
    learner = ray.remote(num_cpus=1)(Learner).remote(model, num_threads=threads)
    worker = ray.remote(num_cpus=1)(RolloutWorker).remote(model, "hf", num_threads=threads)
    actors = [learner, worker]
    ray.get([a.__ray_call__.remote(_settle) for a in actors])
    before = ray.get([a.__ray_call__.remote(_memory) for a in actors])
    plan = None
    if way == "collective":
        plan = ray.get(learner.weight_plan.remote(bucket_mib * MIB))
        address, port = ray.get(learner.rendezvous.remote())
        ray.get([learner.join_weight_group.remote(address, port, 2), worker.join_weight_group.remote(address, port, 1, 2)])
    seconds, moved = [], 0
    for version in range(1, syncs + 1):
        started = time.perf_counter()
        if plan is not None:
            sent = learner.broadcast_weights.remote(plan)
            ray.get(worker.receive_weights.remote(plan, version))
            ray.get(sent)
            moved = plan.nbytes
        else:
            weights = ray.get(learner.rollout_weights.remote(way == "shared_memory"))
            ray.get(worker.set_weights.remote(weights, version))
            moved = weights.nbytes
        seconds.append(time.perf_counter() - started)
    after = ray.get([a.__ray_call__.remote(_memory) for a in actors])
    ray.get(learner.close.remote())
    for actor in actors:
        ray.kill(actor)
    extra = [(a["VmHWM"] - b["VmRSS"]) / MIB for a, b in zip(after, before)]
    name = way if bucket_mib is None else f"{way} ({bucket_mib} MiB buckets)"
    return [name, moved / MIB, statistics.median(seconds), extra[0], extra[1], before[0]["VmRSS"] / MIB]


def main() -> None:
    args = arguments(__doc__.split("\n\n")[0], syncs=3)
    config = RunConfig()
    config.ray.num_cpus = 2
    start_ray(config)
    with workdir() as folder:
        assets = embedded_assets(Path(folder) / "embedded")
        model = str(assets.base_model) if args.quick else qwen_shaped_model(Path(folder) / "qwen", str(assets.base_model))
        rows = [measure(model, way, bucket, args.syncs, max(1, args.threads // 2)) for way, bucket in WAYS]
    report("weight_sync", args, ["way", "MiB per sync", "sync s (median)", "learner peak extra MiB",
                                 "worker peak extra MiB", "learner held before MiB"], rows,
           extra={"model": "embedded" if args.quick else "qwen2.5-0.5b-shape", "syncs": args.syncs})


if __name__ == "__main__":
    main()
