"""A tiny randomly initialised Qwen2-architecture model, built locally (no download).

Saved with ``pipeline.core.checkpoint.save_policy``, it is an ordinary Hugging Face folder, so the
real-model code path loads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from pipeline.core.shapes import ModelShape

from .tokenizer import PAD_TOKEN

TINY_MAX = 8192  # of any TinyModelConfig size


@dataclass
class TinyModelConfig:
    """Size and init seed of the embedded base model."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        ):
            if not 1 <= getattr(self, name) <= TINY_MAX:  # tiny: built in memory, on every run's start
                raise ValueError(f"TinyModelConfig.{name} must be in [1, {TINY_MAX}], got {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"TinyModelConfig.seed must be in [0, 2**32), got {self.seed}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int, int]:
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    # Qwen2 has no BOS in its prompts; like Qwen2.5's config, bos_token_id names <|endoftext|>.
    bos = tokenizer.bos_token_id
    if bos is None:
        bos = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    if eos is None or pad is None or bos is None:
        raise ValueError("the tokenizer needs an eos token (and a pad or <|endoftext|> token)")
    return bos, eos, pad


def build_tiny_model(
    tokenizer: PreTrainedTokenizerBase, config: TinyModelConfig | None = None
) -> Qwen2ForCausalLM:
    """A float32 Qwen2ForCausalLM sized by `config`, weights a pure function of `config.seed`."""
    config = config or TinyModelConfig()
    bos, eos, pad = _special_ids(tokenizer)
    hf_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        use_sliding_window=False,
    )
    hf_config.dtype = torch.float32
    # fork_rng: seed the init without disturbing the caller's global torch RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = Qwen2ForCausalLM(hf_config)
    model = model.to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    model.eval()
    return model


def build_shaped_model(tokenizer: PreTrainedTokenizerBase, shape: ModelShape, seed: int = 0) -> Qwen2ForCausalLM:
    """Random float32 weights in a real model's ``shape`` (``pipeline.core.shapes.SHAPES``), with
    the embedded tokenizer, whose ids are the first of the shape's vocabulary: a model whose
    memory and compute are the real one's, trained on the embedded task. Qwen2.5's position and
    norm settings; a 4,096-token context, Qwen2.5-Math's."""
    if len(tokenizer) > shape.vocab:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than the shape's vocabulary of {shape.vocab}")
    bos, eos, pad = _special_ids(tokenizer)
    config = Qwen2Config(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, tie_word_embeddings=shape.tied,
                         max_position_embeddings=4096, rope_theta=1e6, rms_norm_eps=1e-6, use_sliding_window=False,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    return model.eval()
