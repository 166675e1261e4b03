"""The embedded default: a miniature but real verifiable task, tokenizer and base model, built locally.

Nothing here downloads anything; `build_embedded_assets` writes all of it from a seed.
"""

from .dataset import (
    ABILITY,
    DATA_SOURCE,
    VERL_SCHEMA,
    EmbeddedAssets,
    build_embedded_assets,
    make_rows,
    read_rows,
    teacher_for_split,
    tokenizer_corpus,
    write_embedded_dataset,
    write_parquet_atomic,
)
from .model import TinyModelConfig, build_tiny_model
from .task import (
    SPLITS,
    Problem,
    TaskConfig,
    Teacher,
    count_solution_paths,
    distinct_paths,
    expert_solution,
    extract_boxed,
    generate_problems,
    is_held_out,
    render_path,
    stable_seed,
    verify,
)
from .tokenizer import CHAT_TEMPLATE, IM_END, IM_START, PAD_TOKEN, build_tokenizer, save_tokenizer

__all__ = [
    "ABILITY",
    "CHAT_TEMPLATE",
    "DATA_SOURCE",
    "IM_END",
    "IM_START",
    "PAD_TOKEN",
    "SPLITS",
    "VERL_SCHEMA",
    "EmbeddedAssets",
    "Problem",
    "TaskConfig",
    "Teacher",
    "TinyModelConfig",
    "build_embedded_assets",
    "build_tiny_model",
    "build_tokenizer",
    "count_solution_paths",
    "distinct_paths",
    "expert_solution",
    "extract_boxed",
    "generate_problems",
    "is_held_out",
    "make_rows",
    "read_rows",
    "render_path",
    "save_tokenizer",
    "stable_seed",
    "teacher_for_split",
    "tokenizer_corpus",
    "verify",
    "write_embedded_dataset",
    "write_parquet_atomic",
]
