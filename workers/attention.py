"""Attention kernels for the two ways this project runs a transformers model.

Both are registered with transformers' ``AttentionInterface``; with no mask function registered
under their names, transformers builds no mask, and the model's own modules (projections, rotary
embedding, norms, MLP) run unchanged around them.

``PACKED_ATTENTION`` (the learner). A micro-batch is packed into one row of N tokens, each
distinct prompt once followed by the responses that share it (``pipeline.core.batch.PackedBatch``),
so that the linear layers run on exactly the tokens that must be computed. For attention alone
the rows are gathered into a right-padded ``[B, W]`` block, row b being its prompt then its
response, whose layout comes through the model's forward (transformers hands extra forward
kwargs to the attention function): one causal sdpa call then serves every row, and since a real
query only looks at earlier keys, the padding at the end of a row is never attended to. On CPU a
loop of one call per sequence cost up to twice as much (28 rows of 72 tokens, forward and
backward: 7.9 against 4.0 ms a layer), and a dense N x N block mask eleven times as much.

``DECODE_ATTENTION`` (the sampler, ``workers.hf_engine``). The caller passes its own key bias
``[B, 1, 1, capacity]`` (0 or -inf: left padding) as the layers' attention mask, and keeps keys
and values in preallocated slots. One new token per row attends through two small matmuls,
grouping query heads by their key-value head instead of copying keys and values for every query
head (on CPU, 190 against 620 us a layer for 128 rows); a prompt prefill (several tokens per row)
adds the causal part and goes through sdpa once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

PACKED_ATTENTION = "gft_packed_sdpa"
DECODE_ATTENTION = "gft_decode"


def packed_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                attention_gather: torch.Tensor | None = None, attention_scatter: torch.Tensor | None = None,
                sliding_window: int | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """``query`` ``[1, H, N, D]``, ``key``/``value`` ``[1, Hkv, N, D]`` of a packed batch, and its
    attention layout (:class:`pipeline.core.batch.PackedBatch`): ``attention_gather`` ``[B, W]``, the
    packed position of each slot of the right-padded block of rows, and ``attention_scatter``
    ``[N]``, the slot each packed position's output comes from. Returns ``[1, N, H, D]`` as
    transformers expects. A layer with a ``sliding_window`` S lets each query see itself and
    the S - 1 positions before it, as transformers (and the sampler) mask it; a row's slots
    are consecutive positions, so slot distance is position distance."""
    if attention_gather is None or attention_scatter is None:
        raise ValueError(f"{PACKED_ATTENTION} needs the packed batch's attention layout "
                         "(attention_gather, attention_scatter)")
    rows, width = attention_gather.shape
    slots = attention_gather.reshape(-1)

    def block(x: torch.Tensor) -> torch.Tensor:  # [1, h, N, D] -> [B, h, W, D]
        heads, dim = x.shape[1], x.shape[-1]
        return x[0].index_select(1, slots).view(heads, rows, width, dim).transpose(0, 1)

    window = None
    if sliding_window and sliding_window < width:
        slot = torch.arange(width, device=query.device)
        behind = slot[:, None] - slot[None, :]  # [W, W]: how far each key is behind each query
        window = (behind >= 0) & (behind < sliding_window)
    out = F.scaled_dot_product_attention(block(query), block(key), block(value), attn_mask=window,
                                         dropout_p=dropout, is_causal=window is None, scale=scaling,
                                         enable_gqa=query.shape[1] != key.shape[1])
    heads, dim = out.shape[1], out.shape[-1]
    return out.transpose(1, 2).reshape(rows * width, heads, dim).index_select(0, attention_scatter)[None], None


def decode_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     sliding_window: int | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """``query`` ``[B, H, T, D]`` of the T newest positions, ``key``/``value`` ``[B, Hkv, L, D]``
    (every cached position, the T newest last) and ``attention_mask`` the key bias ``[B, 1, 1, >=L]``;
    returns ``[B, T, H, D]``. A layer with a ``sliding_window`` W sees only the W newest positions
    (left padding shifts a row's keys and queries alike, so distances are slot distances)."""
    if attention_mask is None:
        raise ValueError(f"{DECODE_ATTENTION} needs the sampler's key bias as its attention mask")
    rows, heads, new, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    bias = attention_mask[..., :length]
    if sliding_window and new == 1 and length > sliding_window:
        bias = bias.clone()
        bias[..., : length - sliding_window] = float("-inf")
    if new > 1:  # prefill: the new positions also attend causally among themselves
        causal = torch.full((new, length), float("-inf"), dtype=bias.dtype, device=query.device).triu(length - new + 1)
        if sliding_window:  # and not to keys W or more positions back
            causal = causal + torch.full_like(causal, float("-inf")).tril(length - new - sliding_window)
        mask = bias + causal
        # a padding query would see no key at all (NaN); let every query see itself, which changes
        # nothing for real ones and keeps padding rows finite
        diagonal = torch.arange(new, device=query.device)
        mask[..., diagonal, length - new + diagonal] = 0.0
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                             enable_gqa=heads != kv_heads)
        return out.transpose(1, 2), None
    grouped = query.view(rows, kv_heads, heads // kv_heads, dim)  # head h reads key-value head h // group
    scores = torch.matmul(grouped, key.transpose(-1, -2)) * (scaling or dim**-0.5) + bias
    out = torch.matmul(scores.float().softmax(-1).to(value.dtype), value)
    return out.view(rows, 1, heads, dim), None


AttentionInterface.register(PACKED_ATTENTION, packed_sdpa)
AttentionInterface.register(DECODE_ATTENTION, decode_attention)
