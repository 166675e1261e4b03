"""Rollout throughput: the RolloutWorker against a raw ``model.generate`` loop.

    python bench/rollout.py [--quick] [--threads N]

Same model (the embedded default's base model), same prompts, ``group`` samples each at
temperature 1 with no top-k or top-p, the same budget of new tokens. "Ours" is
``RolloutWorker.rollout``: sampling, behaviour log-probs and entropy, and the Arrow batch. The
raw loop is ``model.generate(do_sample=True, num_return_sequences=group)`` on the left-padded
prompts, with the model as transformers loads it (sdpa attention, its own cache). Both count the
real response tokens (up to and including EOS) per second of wall time; the two are timed in
turns.
"""

from __future__ import annotations

import torch

from bench.common import arguments, embedded_assets, interleaved_seconds, prompts, report, workdir
from pipeline.checkpoint import load_policy
from workers.hf_generate import SamplingParams, _left_pad
from workers.rollout import RolloutWorker


def _response_tokens(sequences: torch.Tensor, prompt_width: int, eos: int, pad: int) -> int:
    """Real tokens of ``generate``'s output: up to the first EOS, the rest is padding."""
    responses = sequences[:, prompt_width:]
    is_eos = responses == eos
    after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
    return int((~after_eos & (responses != pad)).sum())


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    size = args.size
    with workdir() as folder:
        assets = embedded_assets(folder)
        worker = RolloutWorker(str(assets.base_model), num_threads=args.threads, max_num_seqs=size.prompts * size.group)
        records = prompts(assets, worker.tokenizer, size.prompts)
        params = SamplingParams(n=size.group, temperature=1.0, max_new_tokens=size.max_new_tokens)
        counts = {}

        def ours():
            _, metrics = worker.rollout(records, params, seed=len(counts.get("ours", [])))
            counts.setdefault("ours", []).append(metrics["rollout_tokens"])

        model, tokenizer = load_policy(str(assets.base_model))
        model.eval()
        ids, mask = _left_pad([r.prompt_ids for r in records], tokenizer.pad_token_id)

        @torch.no_grad()
        def raw():
            out = model.generate(input_ids=ids, attention_mask=mask.long(), do_sample=True, temperature=1.0, top_k=0,
                                 top_p=1.0, num_return_sequences=size.group, max_new_tokens=size.max_new_tokens,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            counts.setdefault("raw", []).append(
                _response_tokens(out, ids.shape[1], tokenizer.eos_token_id, tokenizer.pad_token_id))

        times = interleaved_seconds({"ours": ours, "raw": raw}, size.repeats)
        ours_times, raw_times = times["ours"], times["raw"]
    # tokens per run vary with sampling: the timed runs' tokens over their time (not the warm-up's)
    ours_rate = sum(counts["ours"][1:]) / sum(ours_times)
    raw_rate = sum(counts["raw"][1:]) / sum(raw_times)
    row = ["hf", size.prompts * size.group, sum(counts["ours"][1:]) / size.repeats,
           sum(counts["raw"][1:]) / size.repeats, ours_rate, raw_rate, ours_rate / raw_rate]
    report("rollout", args, ["backend", "sequences", "ours_tokens", "raw_tokens", "ours_tokens_per_s",
                             "raw_tokens_per_s", "ratio"], [row])


if __name__ == "__main__":
    main()
