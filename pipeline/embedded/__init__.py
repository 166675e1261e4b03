"""The embedded default: a miniature but real verifiable task, tokenizer and base model, built locally.

Nothing here downloads anything; `build_embedded_assets` writes all of it from a seed. Names load
on first use, so the task and its verifier (pure Python) import without torch or transformers,
which keeps the reward worker processes quick to start.
"""

from importlib import import_module

_HOMES = {
    "dataset": [
        "ABILITY",
        "VERL_SCHEMA",
        "EmbeddedAssets",
        "build_embedded_assets",
        "make_retain_rows",
        "make_rows",
        "read_rows",
        "teacher_for_split",
        "tokenizer_corpus",
        "write_embedded_dataset",
    ],
    "model": ["TinyModelConfig", "build_shaped_model", "build_tiny_model"],
    "task": [
        "DATA_SOURCE",
        "RETAIN_DATA_SOURCE",
        "RETAIN_SPLITS",
        "SPLITS",
        "LargestProblem",
        "Problem",
        "TaskConfig",
        "Teacher",
        "count_solution_paths",
        "distinct_paths",
        "expert_solution",
        "extract_boxed",
        "generate_largest",
        "generate_problems",
        "largest_path",
        "problem_split",
        "render_path",
        "stable_seed",
        "verify",
    ],
    "tokenizer": ["CHAT_TEMPLATE", "IM_END", "IM_START", "PAD_TOKEN", "build_tokenizer", "save_tokenizer"],
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value
