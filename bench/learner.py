"""Learner throughput: a GFT and a GRPO update against the raw-torch limit on the same tokens.

    python bench/learner.py [--quick] [--threads N]

Both sides start from the same weights and see the same real batch (a rollout of the embedded
default's base model, scored). "Ours" is ``Learner.update`` as a stage calls it: packed
micro-batches of ``micro_batch_tokens``, the stage's objective, entropy and KL measurement,
gradient clipping and AdamW. The raw limit is the least a training step must do with those
tokens: one forward, the token log-probs, a policy-gradient loss, one backward and AdamW.
It is taken two ways, and the faster counts:
- padded: the whole batch as one right-padded ``[rows, longest]`` tensor, as a plain loop would;
- packed: the same micro-batches as ours, each one packed row, attending within each sequence.
Throughput counts real (prompt + response) tokens; padding is reported, not counted.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.common import (
    arguments,
    embedded_assets,
    gft_batch,
    grpo_batch,
    median_seconds,
    prompts,
    report,
    workdir,
)
from pipeline.batch import PackedBatch, to_packed, to_padded
from pipeline.checkpoint import load_policy
from pipeline.config import StageConfig
from pipeline.objectives import objective_for
from workers.learner import Learner, _micro_batches, packed_token_stats
from workers.packed_attention import PACKED_ATTENTION
from workers.rollout import RolloutWorker


def _tokens(batch) -> int:
    return int(sum(np.asarray(batch.column(c).value_lengths()).sum() for c in ("prompt_ids", "response_ids")))


def _padding_fraction(batch, pad_token_id: int) -> float:
    padded = to_padded(batch, pad_token_id)
    return 1.0 - _tokens(batch) / padded.input_ids.numel()


def _raw_padded_step(model, optimizer, batch, pad_token_id: int):
    padded = to_padded(batch, pad_token_id)
    logits = model(input_ids=padded.input_ids, attention_mask=padded.attention_mask,
                   position_ids=padded.position_ids).logits
    width = padded.prompt_width
    response_logits = logits[:, width - 1 : -1].float()
    log_probs = torch.log_softmax(response_logits, -1).gather(-1, padded.responses[..., None])[..., 0]
    mask = padded.response_mask
    loss = -(padded.advantages[:, None] * log_probs * mask).sum() / mask.sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _raw_packed_step(model, optimizer, micro: list[PackedBatch], total_response_tokens: float):
    optimizer.zero_grad(set_to_none=True)
    for packed in micro:
        log_probs, _ = packed_token_stats(model, packed, with_entropy=False)
        mask = packed.response_mask
        (-(packed.advantages * log_probs * mask).sum() / total_response_tokens).backward()
    optimizer.step()


def measure(stage: StageConfig, batch, model_path: str, repeats: int) -> dict:
    tokens = _tokens(batch)
    learner = Learner(model_path, num_threads=torch.get_num_threads())
    learner.start_stage(model_path, stage.lr)
    objective = objective_for(stage)
    # as a step of a stage without a KL loss runs it, on the 9 steps in 10 that do not log the KL
    ours, _ = median_seconds(lambda: learner.update(batch, objective, 1, stage.micro_batch_tokens, False), repeats)

    model, tokenizer = load_policy(model_path)
    optimizer = torch.optim.AdamW(model.parameters(), lr=stage.lr)
    pad = tokenizer.pad_token_id
    padded, _ = median_seconds(lambda: _raw_padded_step(model, optimizer, batch, pad), repeats)
    model.set_attn_implementation(PACKED_ATTENTION)
    micro = [to_packed(m) for m in _micro_batches(batch, stage.micro_batch_tokens)]
    response_tokens = float(np.asarray(batch.column("response_ids").value_lengths()).sum())
    packed, _ = median_seconds(lambda: _raw_packed_step(model, optimizer, micro, response_tokens), repeats)
    limit = min(padded, packed)
    return {"stage": stage.algorithm, "rows": batch.num_rows, "tokens": tokens,
            "ours_tokens_per_s": tokens / ours, "raw_padded_tokens_per_s": tokens / padded,
            "raw_packed_tokens_per_s": tokens / packed, "ratio": limit / ours,
            "padding_before": _padding_fraction(batch, pad), "padding_after": 0.0}


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    size = args.size
    with workdir() as folder:
        assets = embedded_assets(folder)
        worker = RolloutWorker(str(assets.base_model), num_threads=args.threads)
        records = prompts(assets, worker.tokenizer, size.prompts)
        stages = {
            "gft": (StageConfig(name="gft", algorithm="gft", lr=2e-4), gft_batch(worker, records, size)),
            "grpo": (StageConfig(name="grpo", algorithm="grpo", lr=5e-5), grpo_batch(worker, records, size)),
        }
        rows = [measure(stage, batch, str(assets.base_model), size.repeats) for stage, batch in stages.values()]
    columns = list(rows[0])
    report("learner", args, columns, [[row[c] for c in columns] for row in rows])


if __name__ == "__main__":
    main()
