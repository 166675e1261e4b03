"""Attention for packed, padding-free batches: causal within each sequence, nothing across them.

The learner packs a micro-batch's sequences into one row of N tokens. The linear layers then
run on exactly the real tokens; attention must not look across sequence boundaries. A dense
N x N block-causal mask would spend most of the attention's work (and its N^2 memory) on
pairs that are masked out, and stops sdpa from taking its causal fast path. Here attention
runs per sequence with ``is_causal``, from the boundaries ``cu_seq_lens_q`` that the caller
passes through the model's forward (transformers hands extra forward kwargs to the attention
function). Registered under ``PACKED_ATTENTION``; with no mask function registered for that
name, transformers builds no mask at all.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

PACKED_ATTENTION = "gft_packed_sdpa"


def packed_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                cu_seq_lens_q: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """``query`` ``[1, H, N, D]``, ``key``/``value`` ``[1, Hkv, N, D]`` of packed sequences with
    boundaries ``cu_seq_lens_q`` ``[S + 1]``; returns ``[1, N, H, D]`` as transformers expects."""
    if cu_seq_lens_q is None:
        raise ValueError(f"{PACKED_ATTENTION} needs the packed sequences' boundaries (cu_seq_lens_q)")
    gqa = query.shape[1] != key.shape[1]
    bounds = cu_seq_lens_q.tolist()
    parts = [
        F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=dropout,
                                       is_causal=True, scale=scaling, enable_gqa=gqa)
        for a, b in itertools.pairwise(bounds)
    ]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register(PACKED_ATTENTION, packed_sdpa)
