"""Learner throughput: a GFT and a GRPO update against the raw-torch limit on the same tokens.

    python bench/learner.py [--quick] [--threads N]

Both sides start from the same weights and see the same real batch (a rollout of the embedded
default's base model, scored). "Ours" is ``Learner.update`` as a stage calls it: packed
micro-batches of ``micro_batch_tokens``, the stage's objective, entropy and KL measurement,
gradient clipping and AdamW. The raw limit is the least a training step must do with those
tokens: one forward, the token log-probs, a policy-gradient loss, one backward and AdamW.
It is taken two ways, and the faster counts:
- padded: the whole batch as one tensor in verl's layout (left-padded prompts, right-padded
  responses), the output layer on the response positions only, as TRL's trainer does;
- packed: the same micro-batches as ours, each one packed row in which a group's rows share one
  copy of their prompt (``pipeline.core.batch.PackedBatch``), attending within each row.
The three are timed in turns. Throughput counts the batch's real (prompt + response) tokens,
whatever the layout computes: ``computed_tokens`` is what the packed layout runs through the
model, the padding fractions what a padded layout would add.
"""

from __future__ import annotations

import statistics

import numpy as np
import torch

from bench.common import (
    arguments,
    embedded_assets,
    gft_batch,
    grpo_batch,
    interleaved_seconds,
    prompts,
    report,
    workdir,
)
from pipeline.core.batch import PackedBatch, groups_together, to_packed, to_padded
from pipeline.core.checkpoint import load_policy
from pipeline.recipe.algorithms import objective_for
from pipeline.recipe.config import StageConfig
from workers.attention import PACKED_ATTENTION
from workers.learner import Learner, UpdateSettings, _micro_batches, packed_token_stats
from workers.rollout import RolloutWorker


def _tokens(batch) -> int:
    return int(sum(np.asarray(batch.column(c).value_lengths()).sum() for c in ("prompt_ids", "response_ids")))


def _padding_fraction(batch, pad_token_id: int) -> float:
    padded = to_padded(batch, pad_token_id)
    return 1.0 - _tokens(batch) / padded.input_ids.numel()


def _raw_padded_step(model, optimizer, batch, pad_token_id: int):
    padded = to_padded(batch, pad_token_id)
    width = padded.responses.shape[1]  # the output layer runs on the response positions only, as TRL's
    logits = model(input_ids=padded.input_ids, attention_mask=padded.attention_mask,
                   position_ids=padded.position_ids, logits_to_keep=width + 1).logits
    response_logits = logits[:, :-1].float()
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
        mask, advantages = packed.response_mask.to(log_probs.device), packed.advantages.to(log_probs.device)
        (-(advantages * log_probs * mask).sum() / total_response_tokens).backward()
    optimizer.step()


def measure(stage: StageConfig, batch, model_path: str, repeats: int) -> dict:
    tokens = _tokens(batch)
    learner = Learner(model_path, num_threads=torch.get_num_threads())
    learner.start_stage(model_path, stage.lr)
    settings = UpdateSettings(objective_for(stage), micro_batch_tokens=stage.micro_batch_tokens, with_reference=False)
    model, tokenizer = load_policy(model_path)
    optimizer = torch.optim.AdamW(model.parameters(), lr=stage.lr)
    pad = tokenizer.pad_token_id
    packed_model, _ = load_policy(model_path)
    packed_model.set_attn_implementation(PACKED_ATTENTION)
    packed_optimizer = torch.optim.AdamW(packed_model.parameters(), lr=stage.lr)
    # the micro-batches the learner makes: a group's rows side by side, as Learner.update orders them
    micro = [to_packed(m) for m in _micro_batches(groups_together(batch), stage.micro_batch_tokens)]
    response_tokens = float(np.asarray(batch.column("response_ids").value_lengths()).sum())
    times = interleaved_seconds({
        # as a step of a stage without a KL loss runs it, on the 9 steps in 10 that do not log the KL
        "ours": lambda: learner.update(batch, settings),
        "padded": lambda: _raw_padded_step(model, optimizer, batch, pad),
        "packed": lambda: _raw_packed_step(packed_model, packed_optimizer, micro, response_tokens),
    }, repeats)
    ours, padded, packed = (statistics.median(times[name]) for name in ("ours", "padded", "packed"))
    limit = min(padded, packed)
    computed = sum(len(m.input_ids) for m in micro)  # each group's prompt once
    return {"stage": stage.algorithm, "rows": batch.num_rows, "tokens": tokens, "computed_tokens": computed,
            "ours_tokens_per_s": tokens / ours, "raw_padded_tokens_per_s": tokens / padded,
            "raw_packed_tokens_per_s": tokens / packed, "ratio": limit / ours,
            "padding_before": _padding_fraction(batch, pad), "padding_after": 0.0}


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    size = args.size
    with workdir() as folder:
        assets = embedded_assets(folder)
        worker = RolloutWorker(str(assets.base_model), num_threads=args.threads)
        records = prompts(assets, worker.engine.tokenizer, size.prompts)
        stages = {
            "gft": (StageConfig(name="gft", algorithm="gft", lr=2e-4), gft_batch(worker, records, size)),
            "grpo": (StageConfig(name="grpo", algorithm="grpo", lr=5e-5), grpo_batch(worker, records, size)),
        }
        rows = [measure(stage, batch, str(assets.base_model), size.repeats) for stage, batch in stages.values()]
    columns = list(rows[0])
    report("learner", args, columns, [[row[c] for c in columns] for row in rows])


if __name__ == "__main__":
    main()
