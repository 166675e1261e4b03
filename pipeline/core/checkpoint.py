"""Policy checkpoints: Hugging Face folders (config + safetensors + tokenizer), written atomically.

A stage's checkpoint is what the next stage, vLLM, verl's ``model.path`` and
``AutoModelForCausalLM.from_pretrained`` load as is.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from os import PathLike
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from pipeline.core.files import atomic_dir

WEIGHTS_FILE = "model.safetensors"
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
                      torch.int64: "I64", torch.int32: "I32", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}

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


def save_policy(model, tokenizer, folder: str | PathLike[str], tensors: Iterable[torch.Tensor] | None = None) -> Path:
    """Write a loadable folder (config, safetensors, generation config, tokenizer) atomically;
    ``tensors`` as for :func:`write_policy_files`."""
    with atomic_dir(folder) as tmp:
        write_policy_files(model, tokenizer, tmp, tensors)
    return Path(folder).absolute()


def saved_weights(model) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint holds, by name, in the order it writes them: the model's state
    dict without the names tied to another (an output layer tied to the embeddings is saved once,
    as Hugging Face does). A sharded model's entries are DTensors: their shapes are the whole
    tensors'."""
    named = dict(model.named_parameters())
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - named.keys()
    return {name: value for name, value in model.state_dict().items() if name not in tied}


def write_policy_files(model, tokenizer, folder: Path, tensors: Iterable[torch.Tensor] | None = None) -> None:
    """The Hugging Face files of a policy, safetensors only, into an existing ``folder``.
    ``tensors``: the whole values of :func:`saved_weights`, in its order, for a model that holds
    only a shard of them (each is written as it comes, so at most one is held at a time)."""
    generation_config = model.generation_config or GenerationConfig()
    generation_config.eos_token_id = tokenizer.eos_token_id
    generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config = generation_config
    weights = saved_weights(model)
    model.config.architectures = [type(model).__name__]
    model.config.dtype = str(next(iter(weights.values())).dtype).removeprefix("torch.")
    model.config.save_pretrained(str(folder))
    generation_config.save_pretrained(str(folder))
    if tensors is None:
        tensors = (value.detach() for value in weights.values())
    write_safetensors(folder / WEIGHTS_FILE, {name: (value.dtype, tuple(value.shape)) for name, value in weights.items()},
                      tensors)
    tokenizer.save_pretrained(str(folder))


def write_safetensors(path: Path, specs: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                      tensors: Iterable[torch.Tensor]) -> None:
    """A safetensors file of the tensors ``specs`` names (dtype, shape), written as ``tensors``
    yields their values (in ``specs``' order, on any device), so that the file never needs all
    of them in memory at once. The header, which comes first, needs only the specs."""
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in specs.items():
        size = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    try:
        with open(path, "wb") as out:
            out.write(struct.pack("<Q", len(encoded)) + encoded)
            for (name, (dtype, shape)), value in zip(specs.items(), tensors, strict=True):
                if value.dtype != dtype or tuple(value.shape) != shape:
                    raise ValueError(f"{path}: {name} is {value.dtype} {tuple(value.shape)}, not {dtype} {shape}")
                out.write(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    except OSError as err:  # a full disk names the file it could not write
        raise OSError(err.errno, err.strerror, str(path)) from err
