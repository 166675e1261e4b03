"""A small byte-level BPE tokenizer, trained locally, that loads back as Qwen2's own tokenizer.

It keeps Qwen2's pre-tokenization (one digit per token) and a ChatML chat template.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from os import PathLike
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Order fixes the ids 0, 1, 2.
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)

# Qwen2's split regex (transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX).
# `\p{N}` is matched one character at a time, so no token ever spans two digits.
QWEN2_PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def _qwen2_pipeline(tokenizer: Tokenizer) -> Tokenizer:
    # The exact normalizer / pre-tokenizer / decoder that Qwen2Tokenizer.__init__ builds, so BPE
    # merges are learned on the same pieces the loaded tokenizer will cut text into.
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of at most `vocab_size` entries on `texts`.

    Returns a `Qwen2Tokenizer` (a `PreTrainedTokenizerFast`) with ids 0/1/2 for
    <|endoftext|> (pad), <|im_start|>, <|im_end|> (eos) and a ChatML chat template.
    """
    base = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
    if vocab_size < base:
        raise ValueError(
            f"vocab_size must be >= {base} (256 bytes + {len(SPECIAL_TOKENS)} specials), got {vocab_size}"
        )
    raw = _qwen2_pipeline(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        # Every byte is in the vocabulary, so any text (even unseen characters) encodes
        # without an unknown token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator((t for t in texts), trainer=trainer)
    model_json = json.loads(raw.to_str())["model"]
    vocab: dict[str, int] = model_json["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]

    # Why Qwen2Tokenizer and not a generic PreTrainedTokenizerFast around `raw`: in
    # transformers 5.x, AutoTokenizer.from_pretrained on a folder whose config.json says
    # model_type "qwen2" always instantiates Qwen2Tokenizer. "qwen2" is listed in
    # MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS, so a tokenizer_class of "TokenizersBackend" /
    # "PreTrainedTokenizerFast" in tokenizer_config.json is overridden, and Qwen2Tokenizer.__init__
    # takes only vocab + merges from tokenizer.json and rebuilds its own NFC normalizer, Qwen
    # regex split + ByteLevel pre-tokenizer and ByteLevel decoder, dropping whatever pipeline
    # tokenizer.json declared. Training on that same pipeline and building the in-memory
    # tokenizer through the same class makes the saved folder load back bit-for-bit identical,
    # and tokenizer_config.json then names the class that is really used.
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IM_START],
        add_prefix_space=False,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    for token, expected_id in zip(SPECIAL_TOKENS, range(len(SPECIAL_TOKENS))):
        actual = tokenizer.convert_tokens_to_ids(token)
        if actual != expected_id:
            raise RuntimeError(f"special token {token} got id {actual}, expected {expected_id}")
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: str | PathLike[str]) -> Path:
    """Write the tokenizer files (tokenizer.json, tokenizer_config.json, chat template) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    return folder
