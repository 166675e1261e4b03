"""Rollout throughput: the hf sampler and vLLM side by side, and the hf sampler against a raw
``model.generate`` loop.

    python -m bench.rollout [--quick] [--threads N] [--big-prompts N]

Every backend is a ``RolloutWorker`` Ray actor, as a run starts it: ``hf`` in this project's
``.venv`` (float32), ``vllm`` in ``.venv-vllm`` (float32 and bfloat16; ``make vllm``). Each gets
all the threads and draws ``group`` samples per prompt at temperature 1, with no top-p, for up to
``max_new_tokens`` tokens; all of them, and the raw loop, are timed in turns. Two models:
- ``embedded``: the embedded default's base model and prompts, at its GRPO size;
- ``qwen2.5-0.5b-shape``: random weights in Qwen2.5-0.5B's shape (24 layers, hidden 896,
  14 query / 2 key-value heads, MLP 4,864, its 151,936-token vocabulary, tied embeddings; 494 M
  parameters), on the embedded prompts, ``--big-prompts`` of them at the same group size.
The raw loop is ``model.generate(do_sample=True, num_return_sequences=group)`` on the
left-padded prompts, with the embedded model as transformers loads it (sdpa attention, its own
cache), in this process. Throughput counts real response tokens (up to and including EOS) per
second of wall time. ``--quick`` runs the embedded model only, at tiny sizes, and vLLM in bfloat16
only (the tests run its float32 engine elsewhere).
"""

from __future__ import annotations

from pathlib import Path

import ray
from transformers import AutoTokenizer

from bench.common import (
    arguments,
    embedded_assets,
    interleaved_seconds,
    prompts,
    qwen_shaped_model,
    raw_generate,
    report,
    workdir,
)
from pipeline.driver.roles import ALLOCATOR_ENV, start_ray
from pipeline.driver.rollout_env import rollout_runtime_env
from pipeline.recipe.config import RunConfig
from workers.rollout import RolloutWorker
from workers.sampling import EngineOptions, SamplingParams

BACKENDS = [("hf", "float32"), ("vllm", "float32"), ("vllm", "bfloat16")]
QUICK_BACKENDS = [("hf", "float32"), ("vllm", "bfloat16")]


def _worker(config: RunConfig, model_path: str, backend: str, dtype: str, threads: int):
    config.rollout.backend = backend
    actor = ray.remote(num_cpus=0, runtime_env=rollout_runtime_env(config, ALLOCATOR_ENV))(RolloutWorker)
    return actor.remote(model_path, backend, EngineOptions(dtype=dtype, max_num_seqs=1024), num_threads=threads)


def _rollout(worker, records, params: SamplingParams, counts: list[int]):
    def run():
        _, metrics = ray.get(worker.rollout.remote(records, params, seed=len(counts)))
        counts.append(metrics["rollout_tokens"])

    return run


def main() -> None:
    args = arguments(__doc__.splitlines()[0], **{"big-prompts": 4})
    size = args.size
    params = SamplingParams(n=size.group, temperature=1.0, max_new_tokens=size.max_new_tokens)
    config = RunConfig()
    config.ray.num_cpus = args.threads
    config.rollout.backend = "vllm"  # start_ray refuses a vLLM environment that cannot run
    started_ray = not ray.is_initialized()  # a cluster this process already has is left up
    start_ray(config)
    rows = []
    with workdir() as folder:
        assets = embedded_assets(Path(folder))
        models = {"embedded": (str(assets.base_model), size.prompts)}
        if not args.quick:
            models["qwen2.5-0.5b-shape"] = (qwen_shaped_model(Path(folder) / "qwen", str(assets.base_model)),
                                            args.big_prompts)
        for model, (path, count) in models.items():
            tokenizer = AutoTokenizer.from_pretrained(path)
            records = prompts(assets, tokenizer, count)
            counts: dict[str, list[int]] = {}
            runs, workers = {}, []
            for backend, dtype in QUICK_BACKENDS if args.quick else BACKENDS:
                name = f"{backend} {dtype}"
                workers.append(_worker(config, path, backend, dtype, args.threads))
                runs[name] = _rollout(workers[-1], records, params, counts.setdefault(name, []))
            if model == "embedded":
                name = "raw-generate float32"
                runs[name] = raw_generate(path, records, params, counts.setdefault(name, []))
            times = interleaved_seconds(runs, size.repeats)
            for worker in workers:
                ray.kill(worker)
            # tokens per run vary with sampling: the timed runs' tokens over their time (not the warm-up's)
            rates = {name: sum(counts[name][1:]) / sum(times[name]) for name in runs}
            for name in runs:
                backend, dtype = name.rsplit(" ", 1)
                rows.append([model, backend, dtype, count * size.group, sum(counts[name][1:]) / size.repeats,
                             rates[name], rates[name] / rates["hf float32"]])
    if started_ray:
        ray.shutdown()
    report("rollout", args, ["model", "backend", "dtype", "sequences", "tokens_per_run", "tokens_per_s",
                             "vs_hf"], rows)


if __name__ == "__main__":
    main()
