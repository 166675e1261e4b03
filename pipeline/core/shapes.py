"""Model shapes: a decoder-only transformer's sizes, read from its config.json or named, and
what follows from them (parameter counts, activation values). ``gft plan`` sums memory from
them; the embedded default builds random-weight models of a named one (``--shape``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer of the Qwen2/Llama family, as its config.json gives it."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    tied: bool
    qkv_bias: bool = True  # Qwen2's q, k and v projections have biases; Llama's have none

    @classmethod
    def of(cls, config: dict) -> ModelShape:
        return cls(vocab=config["vocab_size"], hidden=config["hidden_size"], intermediate=config["intermediate_size"],
                   layers=config["num_hidden_layers"], heads=config["num_attention_heads"],
                   kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
                   tied=bool(config.get("tie_word_embeddings", False)),
                   qkv_bias=config.get("model_type") == "qwen2" or bool(config.get("attention_bias", False)))

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)

    def layer_parameters(self) -> int:
        h, kv = self.hidden, self.kv_dim
        attention = h * h + 2 * h * kv + h * h + (h + 2 * kv if self.qkv_bias else 0)
        return attention + 3 * h * self.intermediate + 2 * h  # MLP: gate, up, down; two norms

    def outer_parameters(self) -> int:
        """The embeddings, the final norm and (untied) the output layer."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def parameters(self) -> int:
        return self.outer_parameters() + self.layers * self.layer_parameters()

    def activation_values(self) -> int:
        """Values one decoder layer keeps per token for its backward."""
        return 9 * self.hidden + 3 * self.kv_dim + 4 * self.intermediate


# Facts from each model's config.json on the Hugging Face hub, for planning a recipe whose
# model.path is not on this machine.
SHAPES = {
    "qwen2.5-0.5b": ModelShape(vocab=151_936, hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2,
                               tied=True),
    "qwen2.5-math-1.5b": ModelShape(vocab=151_936, hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2,
                                    tied=True),
    "qwen2.5-math-7b": ModelShape(vocab=152_064, hidden=3584, intermediate=18_944, layers=28, heads=28, kv_heads=4,
                                  tied=False),
}
