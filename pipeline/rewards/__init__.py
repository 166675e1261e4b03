"""Rewards with verl's signature ``compute_score(data_source, solution_str, ground_truth,
extra_info) -> float``: the built-in verifiers (``verifiers``), or a user's function from a file.
``guard.RewardGuard`` runs either one under a per-call timeout.

A user reward file is executed as Python code when it is loaded: only load files you trust.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path

from pipeline.rewards.verifiers import DEFAULT_EXTRACTION, default_compute_score

ComputeScore = Callable[..., float]

__all__ = ["ComputeScore", "default_compute_score", "load_reward_function"]


def load_reward_function(path: str | None, extraction: str = DEFAULT_EXTRACTION) -> ComputeScore:
    """``compute_score`` from a Python file, or the built-in verifiers with the answer
    ``extraction`` (``verifiers.EXTRACTIONS``) when ``path`` is None."""
    if path is None:
        return functools.partial(default_compute_score, extraction=extraction)
    spec = importlib.util.spec_from_file_location(f"user_reward_{Path(path).stem}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"reward function file {path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    function = getattr(module, "compute_score", None)
    if not callable(function):
        raise TypeError(f"reward function file {path} defines no compute_score function")
    return function
