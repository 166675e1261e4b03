"""Policy checkpoints: Hugging Face folders (config + safetensors + tokenizer), written atomically.

A stage's checkpoint is what the next stage, vLLM, verl's ``model.path`` and
``AutoModelForCausalLM.from_pretrained`` load as is.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from pipeline.core.files import atomic_dir, safetensors_os_errors

# per-load progress bars would interleave across actors' logs
transformers.utils.logging.disable_progress_bar()


def torch_dtype(name: str) -> torch.dtype:
    """``auto``: bfloat16 where a GPU computes, float32 on CPU (where bf16 matmuls are slow)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def load_policy(path: str | PathLike[str], dtype: str | torch.dtype = "float32"):
    """(model, tokenizer) from a local Hugging Face folder; nothing is downloaded. Weights are
    read from safetensors only: a pickle (``pytorch_model.bin``) can run code as it loads, so a
    folder holding no safetensors is an error even where ``config.validate`` did not run."""
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype if isinstance(dtype, torch.dtype) else torch_dtype(dtype), local_files_only=True,
        use_safetensors=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model, tokenizer


def save_policy(model, tokenizer, folder: str | PathLike[str], state_dict: dict | None = None) -> Path:
    """Write a loadable folder (config, safetensors, generation config, tokenizer) atomically."""
    with atomic_dir(folder) as tmp:
        write_policy_files(model, tokenizer, tmp, state_dict)
    return Path(folder).absolute()


def write_policy_files(model, tokenizer, folder: Path, state_dict: dict | None = None) -> None:
    """The Hugging Face files of a policy, safetensors only, into an existing ``folder``;
    ``state_dict``: the weights to write, when the model holds only a shard of them."""
    generation_config = model.generation_config or GenerationConfig()
    generation_config.eos_token_id = tokenizer.eos_token_id
    generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config = generation_config
    if state_dict is not None:  # copies share no storage, so transformers cannot see tied weights
        aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - dict(model.named_parameters()).keys()
        state_dict = {name: value for name, value in state_dict.items() if name not in aliases}
    with safetensors_os_errors(folder):
        model.save_pretrained(str(folder), state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
