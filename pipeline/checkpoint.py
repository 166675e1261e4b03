"""Policy checkpoints: Hugging Face folders (config + safetensors + tokenizer), written atomically.

A stage's checkpoint is what the next stage, vLLM, verl's ``model.path`` and
``AutoModelForCausalLM.from_pretrained`` load as is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from os import PathLike
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

# per-load progress bars would interleave across actors' logs
transformers.utils.logging.disable_progress_bar()


def load_policy(path: str | PathLike[str], dtype: str = "float32"):
    """(model, tokenizer) from a local Hugging Face folder; nothing is downloaded."""
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model, tokenizer


def save_policy(model, tokenizer, folder: str | PathLike[str]) -> Path:
    """Write a loadable folder (config, safetensors, generation config, tokenizer) atomically.

    Everything goes into a temporary sibling first and is renamed into place, so a reader sees
    the old folder or the complete new one, never a partial write.
    """
    folder = Path(folder).absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        generation_config = model.generation_config or GenerationConfig()
        generation_config.eos_token_id = tokenizer.eos_token_id
        generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config = generation_config
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        os.chmod(tmp, 0o755)  # mkdtemp makes a 0700 folder; the checkpoint is meant to be shared
        _replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _replace_dir(src: Path, dst: Path) -> None:
    # os.replace cannot overwrite a non-empty directory: move the old one aside first, then
    # rename the new one in, and delete the old copy only after the new one is in place.
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.replace(dst, old / dst.name)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
