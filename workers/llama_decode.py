"""One decoding step of a Llama-family transformers model (Llama, Qwen2), read off its modules.

On a CPU a small model's decoding step costs more in what surrounds its arithmetic than in the
arithmetic: a transformers forward wraps its operations in module calls, decorators, and mask
and cache bookkeeping. This step runs the same weight tensors (no copies, so new weights loaded
into the model are seen at once) without them: RMSNorm, the projections, the model's own rotary
embedding module (so every RoPE variant is the model's), the key-value slots and the
grouped-query attention of :func:`workers.attention.decode_attention`, and the gated MLP. On
the embedded model it took a 128-row rollout from 0.205 to 0.175 s. Models of other shapes
decode through their own forward (``workers.hf_engine``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workers.attention import decode_attention

FAMILY = ("llama", "qwen2")


def supports(model) -> bool:
    """A Llama-family decoder with full attention in every layer and a SiLU-gated MLP."""
    config = model.config
    return (
        config.model_type in FAMILY
        and config.hidden_act == "silu"
        and set(getattr(config, "layer_types", None) or ["full_attention"]) == {"full_attention"}
    )


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaDecodeStep:
    """``step(tokens [B], positions [B], key_bias [B, 1, 1, C], slots) -> logits [B, V]``: the
    model's next-token logits for one new token per row, its keys and values written to
    ``slots`` (a :class:`workers.hf_engine.KVSlots` filled by the prompt's prefill)."""

    def __init__(self, model):
        if not supports(model):
            raise ValueError(f"{type(model).__name__} is not a Llama-family decoder ({', '.join(FAMILY)})")
        self.model = model
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        # the parameter tensors, looked up once per generate() call instead of once per layer and step
        self.layers = [_LayerWeights(layer) for layer in model.model.layers]

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, key_bias: torch.Tensor, slots) -> torch.Tensor:
        decoder = self.model.model
        rows, heads, kv_heads, dim = tokens.shape[0], self.heads, self.kv_heads, self.head_dim
        hidden = decoder.embed_tokens(tokens)  # [B, hidden]
        cos, sin = decoder.rotary_emb(hidden[:, None], positions[:, None])  # [B, 1, D] each
        cos, sin = cos[:, :, None], sin[:, :, None]  # [B, 1, 1, D] against [B, 1, heads, D]
        for index, w in enumerate(self.layers):
            x = F.rms_norm(hidden, w.input_norm.shape, w.input_norm, w.input_eps)
            query = F.linear(x, w.q, w.q_bias).view(rows, 1, heads, dim)
            key = F.linear(x, w.k, w.k_bias).view(rows, 1, kv_heads, dim)
            value = F.linear(x, w.v, w.v_bias).view(rows, 1, kv_heads, dim)
            query = query * cos + _rotate_half(query) * sin
            key = key * cos + _rotate_half(key) * sin
            keys, values = slots.update(key.transpose(1, 2), value.transpose(1, 2), index)
            out, _ = decode_attention(None, query.transpose(1, 2), keys, values, key_bias, scaling=w.scaling)
            hidden = hidden + F.linear(out.reshape(rows, -1), w.o, w.o_bias)
            x = F.rms_norm(hidden, w.post_norm.shape, w.post_norm, w.post_eps)
            gated = F.silu(F.linear(x, w.gate, w.gate_bias)) * F.linear(x, w.up, w.up_bias)
            hidden = hidden + F.linear(gated, w.down, w.down_bias)
        norm = decoder.norm
        return self.model.lm_head(F.rms_norm(hidden, norm.weight.shape, norm.weight, norm.variance_epsilon))


class _LayerWeights:
    """One decoder layer's parameters and constants, as plain attributes."""

    def __init__(self, layer):
        attention, mlp = layer.self_attn, layer.mlp
        for name, linear in [("q", attention.q_proj), ("k", attention.k_proj), ("v", attention.v_proj),
                             ("o", attention.o_proj), ("gate", mlp.gate_proj), ("up", mlp.up_proj),
                             ("down", mlp.down_proj)]:
            setattr(self, name, linear.weight)
            setattr(self, f"{name}_bias", linear.bias)
        self.input_norm, self.input_eps = layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon
        self.post_norm, self.post_eps = (layer.post_attention_layernorm.weight,
                                         layer.post_attention_layernorm.variance_epsilon)
        self.scaling = attention.scaling
