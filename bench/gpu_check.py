"""The CUDA paths in one process: the learner's GFT update in bf16 and the hf sampler, each
against its raw-torch limit, with the learner's MFU.

    bash scripts/gpu_check.sh [--quick] [--peak-tflops X]

Written for a lent GPU machine, which has torch, transformers, numpy and pyarrow but neither Ray
nor vLLM nor verl: the roles run here as plain objects (``RolloutWorker``, ``Learner``), and the
GFT loss is the project's own. On a GPU the model is a random-weight one of Qwen2.5-0.5B's shape
(``bench.common.qwen_shaped_model``; the embedded model with ``--quick``), in bf16. Without a GPU
it falls back to the CPU, in float32, with the embedded model, so it can be checked anywhere.

- Sampler: ``RolloutWorker.rollout`` (the hf backend: KV slots, the short decoding step,
  inverse-CDF draws) against ``model.generate(do_sample=True)``, same prompts, group 8, up to
  ``max_new_tokens`` tokens, timed in turns.
- Learner: ``Learner.update`` on a GFT batch (per prompt 1 expert, 3 teacher, 4 self rows;
  advantages drawn at random, which the update's cost does not depend on) against the raw
  packed step of ``bench.learner`` on the same micro-batches: one forward, the token log-probs,
  a policy-gradient loss, one backward and AdamW, under the same autocast.
- MFU: 6 x (the decoder's parameters x the tokens computed + the output layer's x the positions
  it runs on) FLOPs per update (attention's own FLOPs left out), over the update's time and the
  GPU's dense bf16 peak (989 TFLOP/s for an H200, NVIDIA's datasheet; ``--peak-tflops`` for
  another).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from bench.common import (
    arguments,
    embedded_assets,
    gft_rows,
    interleaved_seconds,
    prompts,
    qwen_shaped_model,
    raw_generate,
    report,
    sync,
    workdir,
)
from bench.learner import _raw_packed_step, _tokens
from pipeline.core.batch import groups_together, to_packed, with_column
from pipeline.core.checkpoint import load_policy
from pipeline.recipe.algorithms import objective_for
from pipeline.recipe.config import StageConfig
from workers.attention import PACKED_ATTENTION
from workers.learner import Learner, UpdateSettings, _micro_batches
from workers.rollout import RolloutWorker
from workers.sampling import EngineOptions, SamplingParams

H200_BF16_TFLOPS = 989.0  # dense, NVIDIA's H200 datasheet (1,979 with sparsity)


def _sampler(worker: RolloutWorker, model_path: str, records, params: SamplingParams, device, dtype, repeats: int):
    counts: dict[str, list[int]] = {"ours": [], "raw": []}

    def ours():
        counts["ours"].append(worker.rollout(records, params, seed=len(counts["ours"]))[1]["rollout_tokens"])
        sync(device)

    raw = raw_generate(model_path, records, params, counts["raw"], dtype, device)
    times = interleaved_seconds({"ours": ours, "raw": raw}, repeats)
    rates = {name: sum(counts[name][1:]) / sum(times[name]) for name in times}
    return {"part": "sampler", "ours_tokens_per_s": rates["ours"], "raw_tokens_per_s": rates["raw"],
            "ratio": rates["ours"] / rates["raw"]}


def _gft_batch(worker: RolloutWorker, records, size, seed: int = 0):
    """A GFT step's rows (``bench.common.gft_rows``) with random advantages: scoring them needs
    verl, which this machine lacks, and the update's cost does not depend on their values."""
    batch = gft_rows(worker, records, size, seed)
    return with_column(batch, "advantage", np.random.default_rng(seed).standard_normal(batch.num_rows))


def _update_flops(model, micro) -> float:
    """6 x (decoder parameters x tokens computed + output layer x positions it runs on)."""
    head = model.get_output_embeddings().weight.numel()
    body = sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name and "lm_head" not in name)
    tokens = sum(len(m.input_ids) for m in micro)
    positions = sum(len(torch.unique(m.predictors)) for m in micro)
    return 6.0 * (body * tokens + head * positions)


def _learner(worker: RolloutWorker, model_path: str, records, size, dtype: str, device, repeats: int):
    stage = StageConfig(name="gft", algorithm="gft", lr=1e-6)
    batch = _gft_batch(worker, records, size)
    learner = Learner(model_path, dtype)
    learner.start_stage(model_path, stage.lr)
    objective = objective_for(stage)
    raw_model, _ = load_policy(model_path)  # float32 weights, computing under autocast as the learner does
    raw_model.set_attn_implementation(PACKED_ATTENTION)
    raw_model.to(device)
    optimizer = torch.optim.AdamW(raw_model.parameters(), lr=stage.lr)
    # the micro-batches the learner makes: a group's rows side by side, as Learner.update orders them
    micro = [to_packed(m) for m in _micro_batches(groups_together(batch), stage.micro_batch_tokens)]
    response_tokens_total = float(np.asarray(batch.column("response_ids").value_lengths()).sum())
    autocast = torch.autocast(device.type, dtype=learner.compute_dtype, enabled=learner.compute_dtype != torch.float32)

    def ours():
        learner.update(batch, UpdateSettings(objective, micro_batch_tokens=stage.micro_batch_tokens, with_reference=False))
        sync(device)

    def raw():
        with autocast:
            _raw_packed_step(raw_model, optimizer, micro, response_tokens_total)
        sync(device)

    times = interleaved_seconds({"ours": ours, "raw": raw}, repeats)
    ours_s, raw_s = statistics.median(times["ours"]), statistics.median(times["raw"])
    tokens = _tokens(batch)
    return {"part": "learner", "ours_tokens_per_s": tokens / ours_s, "raw_tokens_per_s": tokens / raw_s,
            "ratio": raw_s / ours_s, "update_tflops": _update_flops(raw_model, micro) / ours_s / 1e12}


def main() -> None:
    args = arguments(__doc__.splitlines()[0], **{"peak-tflops": 0})
    size = args.size
    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = "bfloat16" if on_gpu else "float32"
    with workdir() as folder:
        assets = embedded_assets(Path(folder))
        model_path = str(assets.base_model)
        if on_gpu and not args.quick:
            model_path = qwen_shaped_model(Path(folder) / "qwen", model_path)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        records = prompts(assets, tokenizer, size.prompts)
        worker = RolloutWorker(model_path, options=EngineOptions(dtype=dtype), num_threads=args.threads)
        params = SamplingParams(n=size.group, temperature=1.0, max_new_tokens=size.max_new_tokens)
        rows = [_sampler(worker, model_path, records, params, device, dtype, size.repeats),
                _learner(worker, model_path, records, size, dtype, device, size.repeats)]
    peak = args.peak_tflops or (H200_BF16_TFLOPS if on_gpu and "H200" in torch.cuda.get_device_name() else 0)
    rows[1]["mfu"] = rows[1]["update_tflops"] / peak if peak else None
    device_name = torch.cuda.get_device_name() if on_gpu else "cpu"
    columns = ["part", "ours_tokens_per_s", "raw_tokens_per_s", "ratio", "update_tflops", "mfu"]
    report("gpu_check", args, ["device", "model", "dtype", *columns],
           [[device_name, Path(model_path).name, dtype, *(row.get(c) for c in columns)] for row in rows])


if __name__ == "__main__":
    main()
