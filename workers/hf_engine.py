"""The rollout's ``hf`` engine: batched, KV-cached sampling with a transformers model.

Tuned for the small-batch, latency-bound decoding of a CPU:
- each prompt is prefilled once, through the model's own forward, and its keys and values
  repeated for its n samples;
- keys and values live in preallocated slots (:class:`KVSlots`) written in place, and attention
  is :data:`~workers.attention.DECODE_ATTENTION`, which reads them without copies;
- a decoding step of a Llama-family model (Llama, Qwen2) runs its weights through
  :mod:`workers.llama_decode`, without the overhead of its forward; other models decode through
  their forward;
- rows that end (EOS or budget) stop being sampled at once, and are dropped from the batch and
  the slots once they are an eighth of it, so finished sequences cost little further compute;
- tokens are drawn by inverse-CDF sampling (one uniform number a row), several times cheaper on
  CPU than ``torch.multinomial``.
The model must attend with ``DECODE_ATTENTION`` (:func:`prepare_for_sampling`).
"""

from __future__ import annotations

import torch
import transformers

from pipeline.core.checkpoint import load_policy
from workers import llama_decode
from workers.attention import DECODE_ATTENTION
from workers.sampling import EngineOptions, Generation, SamplingParams
from workers.weight_group import SyncPlan, WeightGroup, receive


def prepare_for_sampling(model):
    """Make ``model`` attend with the sampler's kernel (its weights and modules are unchanged)."""
    model.set_attn_implementation(DECODE_ATTENTION)
    return model


class KVSlots:
    """Keys and values of every layer, ``[rows, kv_heads, capacity, head_dim]`` each, allocated
    at a layer's first write. The model calls ``update`` once per layer with the positions of the
    current forward and attends over what it returns; the sampler then moves the write position
    with ``advance``."""

    def __init__(self, capacity: int):
        self.capacity, self.length = capacity, 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        """``key``/``value`` ``[rows, kv_heads, new, head_dim]``; returns every position cached so
        far, ``[rows, kv_heads, length, head_dim]`` each."""
        if layer_idx == len(self.keys):
            shape = (key.shape[0], key.shape[1], self.capacity, key.shape[3])
            self.keys.append(key.new_empty(shape))
            self.values.append(value.new_empty(shape))
        end = self.length + key.shape[2]
        self.keys[layer_idx][:, :, self.length : end] = key
        self.values[layer_idx][:, :, self.length : end] = value
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def advance(self, positions: int) -> None:
        self.length += positions

    def select(self, rows: torch.Tensor) -> None:
        """Keep (or repeat) the given rows, in that order."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]


def _left_pad(prompts: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = True
    return ids, mask


def _inverse_cdf_sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index a row of ``probs`` ``[A, V]`` (non-negative, not necessarily normalised), drawn
    with probability proportional to its entry: the first entry whose cumulative sum exceeds a
    uniform draw in ``[0, total)``. An entry of 0 is never drawn."""
    cdf = probs.double().cumsum(-1)
    total = cdf[:, -1:]
    draw = torch.rand(total.shape, generator=generator, device=probs.device, dtype=torch.float64) * total
    draw = torch.minimum(draw, torch.nextafter(total, torch.zeros_like(total)))  # stays below total
    # NaN probabilities (a blown-up policy) find no entry; the rollout worker reports their NaN log-probs
    return torch.searchsorted(cdf, draw, right=True)[:, 0].clamp_(max=probs.shape[-1] - 1)


def _choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None):
    """Next tokens ``[A]``, their log-probs ``[A]`` and the policy's (temperature-1) entropy
    ``[A]`` from last-position logits ``[A, V]``."""
    policy_log_probs = torch.log_softmax(logits, -1)
    policy_probs = policy_log_probs.exp()
    entropy = -(policy_probs * policy_log_probs).sum(-1)
    if params.temperature == 0:
        tokens = logits.argmax(-1)
        return tokens, policy_log_probs.gather(-1, tokens[:, None])[:, 0], entropy
    if params.temperature == 1:
        log_probs, probs = policy_log_probs, policy_probs
    else:
        log_probs = torch.log_softmax(logits / params.temperature, -1)
        probs = log_probs.exp()
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always survives)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        log_probs = log_probs - probs.sum(-1, keepdim=True).log()  # the nucleus, renormalised
    tokens = _inverse_cdf_sample(probs, generator)
    return tokens, log_probs.gather(-1, tokens[:, None])[:, 0], entropy


def _module_step(model):
    """A decoding step through the model's own forward, for any architecture."""

    def step(tokens: torch.Tensor, positions: torch.Tensor, key_bias: torch.Tensor, slots: KVSlots) -> torch.Tensor:
        return model(input_ids=tokens[:, None], attention_mask=key_bias, position_ids=positions[:, None],
                     past_key_values=slots, use_cache=True).logits[:, -1]

    return step


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
    if model.config._attn_implementation != DECODE_ATTENTION:
        raise ValueError("generate() needs a model prepared with workers.hf_engine.prepare_for_sampling")
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = _left_pad(prompts, pad_token_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    width, budget = prompt_ids.shape[1], params.max_new_tokens
    # what every key position adds to the attention scores: -inf for the prompts' left padding
    key_bias = torch.zeros(len(prompts), 1, 1, width + budget, dtype=model.dtype, device=device)
    key_bias[:, 0, 0, :width].masked_fill_(~prompt_mask, float("-inf"))
    positions = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)
    slots = KVSlots(width + budget)
    logits = model(input_ids=prompt_ids, attention_mask=key_bias, position_ids=positions, past_key_values=slots,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    slots.advance(width)
    samples = torch.arange(len(prompts), device=device).repeat_interleave(params.n)  # row -> its prompt
    slots.select(samples)
    key_bias, logits, next_position = key_bias[samples], logits[samples], positions[samples, -1] + 1

    decode_step = llama_decode.LlamaDecodeStep(model) if llama_decode.supports(model) else _module_step(model)
    num_rows = len(samples)
    tokens_out = torch.zeros(num_rows, budget, dtype=torch.long, device=device)
    logprobs_out = torch.zeros(num_rows, budget, device=device)
    entropy_sums = torch.zeros(num_rows, device=device)
    ended_at = torch.full((num_rows,), -1, dtype=torch.long, device=device)  # tokens up to and with EOS
    slot_rows = torch.arange(num_rows, device=device)  # the row each batch slot samples for
    live = torch.ones(num_rows, dtype=torch.bool, device=device)
    eos = torch.tensor(eos_token_ids, device=device)

    for step in range(budget):
        tokens, token_logprobs, entropies = _choose(logits.float(), params, generator)
        tokens_out[slot_rows, step] = tokens
        logprobs_out[slot_rows, step] = token_logprobs
        entropy_sums[slot_rows] += entropies * live
        ending = live & torch.isin(tokens, eos)
        ended_at[slot_rows[ending]] = step + 1
        live &= ~ending
        if step == budget - 1 or not live.any():
            break
        if (~live).sum() * 8 >= len(live):  # drop the finished rows once they are an eighth of the batch
            keep = live.nonzero()[:, 0]
            slots.select(keep)
            slot_rows, live, tokens = slot_rows[keep], live[keep], tokens[keep]
            key_bias, next_position = key_bias[keep], next_position[keep]
        logits = decode_step(tokens, next_position, key_bias, slots)
        slots.advance(1)
        next_position = next_position + 1

    truncated = (ended_at < 0).tolist()
    lengths = torch.where(ended_at < 0, budget, ended_at).tolist()
    response_ids = [ids[:n] for ids, n in zip(tokens_out.tolist(), lengths)]
    logprobs = [values[:n] for values, n in zip(logprobs_out.tolist(), lengths)]
    entropy = [total / n for total, n in zip(entropy_sums.tolist(), lengths)]
    return Generation(response_ids, logprobs, truncated, entropy)


class HfEngine:
    """``model_path`` sampled by :func:`generate`, on the GPU where there is one, in chunks of
    at most ``max_num_seqs`` sequences."""

    def __init__(self, model_path: str, options: EngineOptions):
        self.dtype, self.max_num_seqs = options.dtype, options.max_num_seqs
        self.weight_group: WeightGroup | None = None
        self.load_checkpoint(model_path)

    def load_checkpoint(self, model_path: str) -> None:
        self.model, self.tokenizer = load_policy(model_path, self.dtype)
        prepare_for_sampling(self.model).eval()
        if torch.cuda.is_available():
            self.model.cuda()

    def load_weights(self, weights) -> None:
        self.model.load_state_dict(weights.state_dict(), strict=True)

    def join_weight_group(self, address: str, port: int, rank: int, world_size: int) -> None:
        self.weight_group = WeightGroup(address, port, rank, world_size, next(self.model.parameters()).device)

    def leave_weight_group(self) -> None:
        if self.weight_group is not None:
            self.weight_group.close()
            self.weight_group = None

    @torch.no_grad()
    def receive_weights(self, plan: SyncPlan) -> None:
        """Take a sync from the weight group, each tensor copied in as its bucket arrives."""
        state = self.model.state_dict()
        missing = set(state)
        for name, value in receive(self.weight_group, plan):
            if name not in state:
                raise KeyError(f"the learner sent {name!r}, which this model does not have")
            state[name].copy_(value)
            missing.discard(name)
        if missing:
            raise KeyError(f"the learner's sync left out {sorted(missing)}")

    def describe(self) -> dict:
        device = next(self.model.parameters()).device
        return {"engine": f"transformers {transformers.__version__} on {device.type}", "sleeps": None}

    def generate(self, prompts: list[list[int]], params: SamplingParams, seed: int) -> Generation:
        generator = torch.Generator(device=next(self.model.parameters()).device).manual_seed(seed)
        chunk = max(1, self.max_num_seqs // params.n)
        out = Generation([], [], [], [])
        for start in range(0, len(prompts), chunk):
            part = generate(self.model, prompts[start : start + chunk], params, [self.tokenizer.eos_token_id],
                            self.tokenizer.pad_token_id, generator)
            out.response_ids += part.response_ids
            out.logprobs += part.logprobs
            out.truncated += part.truncated
            out.entropy += part.entropy
        return out
