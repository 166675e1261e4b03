"""Batched, KV-cached sampling with a transformers model: the rollout's "hf" backend.

Each prompt is prefilled once and its cache repeated for its n samples. Decoding then runs one
token per step over the *active* rows only: when a row emits EOS (or hits its budget) it is
dropped from the batch and from the KV cache, so finished sequences cost no further compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 64


@dataclass
class Generation:
    """Row ``i * n + j`` is sample j of prompt i. ``logprobs`` are log-probs of the sampled
    tokens under the policy's temperature-scaled distribution (before top-p truncation), i.e.
    what the learner recomputes; greedy decoding reports temperature-1 log-probs."""

    response_ids: list[list[int]]
    logprobs: list[list[float]]
    truncated: list[bool]
    # per row, the mean over its tokens of the policy's (temperature-1) predictive entropy; None
    # from backends that do not see the full distribution
    entropy: list[float] | None = None

    @property
    def num_tokens(self) -> int:
        return sum(map(len, self.response_ids))


def _left_pad(prompts: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def _choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None):
    """Next tokens ``[A]``, their log-probs ``[A]`` and the policy's (temperature-1) entropy
    ``[A]`` from last-position logits ``[A, V]``."""
    policy_log_probs = torch.log_softmax(logits, -1)  # one softmax serves all three at temperature 0 or 1
    entropy = -(policy_log_probs.exp() * policy_log_probs).sum(-1)
    if params.temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, policy_log_probs.gather(-1, tokens[:, None])[:, 0], entropy
    log_probs = policy_log_probs if params.temperature == 1 else torch.log_softmax(logits / params.temperature, -1)
    probs = log_probs.exp()
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always survives)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    tokens = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return tokens, log_probs.gather(-1, tokens[:, None])[:, 0], entropy


@torch.no_grad()
def generate(
    model,
    prompts: list[list[int]],
    params: SamplingParams,
    eos_token_ids: list[int],
    pad_token_id: int,
    generator: torch.Generator | None = None,
) -> Generation:
    """Sample ``params.n`` responses for each prompt (token ids, no padding). See module doc."""
    if not prompts:
        return Generation([], [], [], [])
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = _left_pad(prompts, pad_token_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True)
    cache = out.past_key_values
    last_logits = out.logits[:, -1]
    if params.n > 1:
        cache.batch_repeat_interleave(params.n)
        last_logits = last_logits.repeat_interleave(params.n, 0)
        prompt_mask = prompt_mask.repeat_interleave(params.n, 0)
        positions = positions.repeat_interleave(params.n, 0)

    num_rows = last_logits.shape[0]
    responses: list[list[int]] = [[] for _ in range(num_rows)]
    logprobs: list[list[float]] = [[] for _ in range(num_rows)]
    truncated = [False] * num_rows
    active = torch.arange(num_rows, device=device)  # original row of each live batch slot
    attention = prompt_mask
    next_position = positions[:, -1] + 1
    eos = torch.tensor(eos_token_ids, device=device)

    entropy_sums = [0.0] * num_rows

    for step in range(params.max_new_tokens):
        tokens, token_logprobs, entropies = _choose(last_logits.float(), params, generator)
        for row, token, logprob, entropy in zip(active.tolist(), tokens.tolist(), token_logprobs.tolist(),
                                                entropies.tolist()):
            responses[row].append(token)
            logprobs[row].append(logprob)
            entropy_sums[row] += entropy
        finished = torch.isin(tokens, eos)
        if step == params.max_new_tokens - 1:
            for row, done in zip(active.tolist(), finished.tolist()):
                truncated[row] = not done
            break
        if finished.any():
            keep = torch.nonzero(~finished).flatten()
            if keep.numel() == 0:
                break
            cache.batch_select_indices(keep)
            active, tokens = active[keep], tokens[keep]
            attention, next_position = attention[keep], next_position[keep]
        attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
        out = model(
            input_ids=tokens[:, None],
            attention_mask=attention,
            position_ids=next_position[:, None],
            past_key_values=cache,
            use_cache=True,
        )
        cache, last_logits = out.past_key_values, out.logits[:, -1]
        next_position = next_position + 1
    entropy = [total / len(ids) for total, ids in zip(entropy_sums, responses)]
    return Generation(responses, logprobs, truncated, entropy)
