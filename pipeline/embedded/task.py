"""Chain addition: the embedded default's verifiable reasoning task.

Problems, the deterministic expert, the noisy-but-diverse teacher and the answer verifier.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SPLITS = ("train", "val", "test", "ood")

# Share of operand multisets reserved for the test split. The reservation is a property of the
# multiset alone (see `problem_split`), so it holds whatever sizes the splits are drawn at.
HELD_OUT_FRACTION = 0.25

# Bound on rejection sampling, so a configuration whose problem space cannot feed a split
# fails loudly instead of looping forever.
_MAX_DRAWS_PER_PROBLEM = 10_000

_MAX_SLIP = 3

DATA_SOURCE = "gft_embedded/chain_addition"  # the verl data_source of every embedded row of the task
# a second family, the largest of a few numbers: a skill the warm-up teaches and the later stages
# do not train, to measure what they keep of it (the `retain` split)
RETAIN_DATA_SOURCE = "gft_embedded/largest"
RETAIN_SPLITS = ("retain_train", "retain")

@dataclass
class TaskConfig:
    """Difficulty knobs and seed of the chain-addition task."""

    min_terms: int = 2
    max_terms: int = 4
    max_operand: int = 9
    ood_min_terms: int = 5
    ood_max_terms: int = 6
    teacher_error_rate: float = 0.2
    seed: int = 0
    # share of the multisets held out of train (and test) for a `val` split, to choose settings
    # on problems no run trains on; 0: no val split, train keeps them
    val_fraction: float = 0.0

    def __post_init__(self) -> None:
        for name in ("min_terms", "max_terms", "max_operand", "ood_min_terms", "ood_max_terms", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"TaskConfig.{name} must be an int, got {value!r}")
        if self.min_terms < 2:
            raise ValueError(
                f"TaskConfig.min_terms must be >= 2 (a chain needs one addition), got {self.min_terms}"
            )
        if self.min_terms > self.max_terms:
            raise ValueError(
                f"TaskConfig.min_terms ({self.min_terms}) must be <= max_terms ({self.max_terms})"
            )
        if self.ood_min_terms < 2:
            raise ValueError(f"TaskConfig.ood_min_terms must be >= 2, got {self.ood_min_terms}")
        if self.ood_min_terms > self.ood_max_terms:
            raise ValueError(
                f"TaskConfig.ood_min_terms ({self.ood_min_terms}) must be <= ood_max_terms ({self.ood_max_terms})"
            )
        if not 1 <= self.max_operand <= 10**6:
            raise ValueError(f"TaskConfig.max_operand must be in [1, 1000000], got {self.max_operand}")
        if max(self.max_terms, self.ood_max_terms) > 64:  # a chain's prompt and answer grow with it
            raise ValueError(f"TaskConfig.max_terms and ood_max_terms must be <= 64, got {self.max_terms} and "
                             f"{self.ood_max_terms}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"TaskConfig.seed must be in [0, 2**32), got {self.seed}")
        rate = self.teacher_error_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"TaskConfig.teacher_error_rate must be a number in [0, 1], got {rate!r}")
        share = self.val_fraction
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 0.5:
            raise ValueError(f"TaskConfig.val_fraction must be a number in [0, 0.5], got {share!r}")

    def term_range(self, split: str) -> tuple[int, int]:
        """Inclusive range of chain lengths a split draws from."""
        _check_split(split)
        if split == "ood":
            return self.ood_min_terms, self.ood_max_terms
        return self.min_terms, self.max_terms


@dataclass(frozen=True)
class Problem:
    """One chain-addition problem: add the operands."""

    operands: tuple[int, ...]

    @property
    def answer(self) -> int:
        return sum(self.operands)

    @property
    def ground_truth(self) -> str:
        return str(self.answer)

    @property
    def question(self) -> str:
        return f"Compute {'+'.join(str(x) for x in self.operands)}."

    @property
    def num_terms(self) -> int:
        return len(self.operands)


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from `parts` that is the same in every process (unlike the salted `hash()`)."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


@dataclass(frozen=True)
class LargestProblem(Problem):
    """The retain family's problem: the largest of the operands (the rest as for :class:`Problem`)."""

    @property
    def answer(self) -> int:
        return max(self.operands)

    @property
    def question(self) -> str:
        return f"Find the largest of {','.join(str(x) for x in self.operands)}."


def largest_path(order: Sequence[int]) -> str:
    """A solution of the retain family: the running maximum over ``order``, then the boxed answer."""
    lines, best = [], order[0]
    for x in order[1:]:
        lines.append(f"max({best},{x})={max(best, x)}")
        best = max(best, x)
    return "\n".join([*lines, f"\\boxed{{{best}}}"])


def generate_largest(config: TaskConfig, split: str, n: int) -> list[LargestProblem]:
    """``n`` problems of the retain family for ``split`` (``retain_train`` or ``retain``), the
    chain lengths and operands of the task's train range; a quarter of the multisets (by a hash
    of the sorted operands, so no reordering crosses over) are the eval split's, the rest
    training's."""
    if split not in RETAIN_SPLITS:
        raise ValueError(f"split must be one of {RETAIN_SPLITS}, got {split!r}")
    rng = random.Random(stable_seed("largest", config.seed, split))
    problems = []
    for _ in range(n * _MAX_DRAWS_PER_PROBLEM):
        if len(problems) == n:
            break
        terms = rng.randint(config.min_terms, config.max_terms)
        operands = tuple(rng.randint(1, config.max_operand) for _ in range(terms))
        held_out = stable_seed("largest_held_out", config.seed, tuple(sorted(operands))) % 4 == 0
        if held_out == (split == "retain"):
            problems.append(LargestProblem(operands))
    if len(problems) < n:
        raise ValueError(f"could not draw {n} {split!r} problems: the problem space of {config} is too small")
    return problems


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def problem_split(config: TaskConfig, operands: Sequence[int]) -> str:
    """The side of the partition a problem belongs to: "test", "val" or "train".

    The rule: hash (seed, sorted operands) to a point of [0, 1); the first HELD_OUT_FRACTION of
    it is test's, the next ``val_fraction`` val's, the rest train's. Each split emits only its own
    multisets, so no two share a problem, not even a reordering of the same operands, for any
    split sizes; and test's share does not move with ``val_fraction``.
    """
    point = (stable_seed("held_out", config.seed, tuple(sorted(operands))) % 10_000) / 10_000
    if point < HELD_OUT_FRACTION:
        return "test"
    return "val" if point < HELD_OUT_FRACTION + config.val_fraction else "train"


def _accepts(config: TaskConfig, split: str, operands: tuple[int, ...]) -> bool:
    if split != "ood":
        return problem_split(config, operands) == split
    # ood: its chain lengths normally lie outside the train range, so nothing can leak; if a
    # configuration makes the ranges overlap, the overlapping lengths obey the test rule.
    if config.min_terms <= len(operands) <= config.max_terms:
        return problem_split(config, operands) == "test"
    return True


def generate_problems(config: TaskConfig, split: str, n: int) -> list[Problem]:
    """`n` problems of `split`, a pure function of (config, split, n).

    The chain length is uniform over the split's term range and each operand uniform over
    1..max_operand; draws that fall on the wrong side of the train/test partition are rejected.
    Problems may repeat within a split (the 2-term space is small).
    """
    _check_split(split)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if split == "val" and n and not config.val_fraction:
        raise ValueError("a val split needs TaskConfig.val_fraction > 0 (the share of problems held out for it)")
    lo, hi = config.term_range(split)
    rng = random.Random(stable_seed("problems", config.seed, split))
    problems: list[Problem] = []
    for _ in range(n):
        for _attempt in range(_MAX_DRAWS_PER_PROBLEM):
            k = rng.randint(lo, hi)
            operands = tuple(rng.randint(1, config.max_operand) for _ in range(k))
            if _accepts(config, split, operands):
                problems.append(Problem(operands))
                break
        else:
            raise ValueError(
                f"could not draw a {split!r} problem in {_MAX_DRAWS_PER_PROBLEM} tries: the problem "
                f"space of {config} is too small to hold disjoint splits"
            )
    return problems


def render_path(order: Sequence[int], slip: tuple[int, int] | None = None) -> str:
    """A solution written as running sums over `order`, then the boxed final total.

    `slip=(step, delta)` makes step `step` (0-based, one step per addition) report its result
    off by `delta`; later steps add correctly onto the wrong total, as a human slip would.
    """
    order = [int(x) for x in order]
    if len(order) < 2:
        raise ValueError(f"a path needs at least two operands, got {order}")
    if slip is not None:
        step, delta = slip
        if not 0 <= step < len(order) - 1:
            raise ValueError(f"slip step must be in [0, {len(order) - 2}], got {step}")
        if delta == 0:
            raise ValueError("a slip needs a nonzero delta")
    lines = []
    total = order[0]
    for step, x in enumerate(order[1:]):
        result = total + x
        if slip is not None and step == slip[0]:
            result += slip[1]
        lines.append(f"{total}+{x}={result}")
        total = result
    lines.append(f"\\boxed{{{total}}}")
    return "\n".join(lines)


def expert_solution(problem: Problem) -> str:
    """The canonical path: operands left to right."""
    return render_path(problem.operands)


class Teacher:
    """A stronger-model stand-in: random operand orders, and one arithmetic slip at `error_rate`."""

    def __init__(self, error_rate: float, seed: int = 0) -> None:
        if (
            isinstance(error_rate, bool)
            or not isinstance(error_rate, (int, float))
            or not 0.0 <= error_rate <= 1.0
        ):
            raise ValueError(f"error_rate must be a number in [0, 1], got {error_rate!r}")
        self.error_rate = float(error_rate)
        self.seed = seed
        self._rng = random.Random(stable_seed("teacher", seed))

    def solve(self, problem: Problem) -> str:
        rng = self._rng
        order = list(problem.operands)
        rng.shuffle(order)
        # The error draw always happens so a response's randomness does not depend on the rate.
        slipped = rng.random() < self.error_rate
        if not slipped:
            return render_path(order)
        step = rng.randrange(len(order) - 1)
        correct_at_step = sum(order[: step + 2])
        deltas = [d for d in range(-_MAX_SLIP, _MAX_SLIP + 1) if d != 0 and correct_at_step + d >= 0]
        return render_path(order, slip=(step, rng.choice(deltas)))

    def solve_many(self, problem: Problem, n: int) -> list[str]:
        return [self.solve(problem) for _ in range(n)]


_BOX_OPEN = "\\boxed{"
_INT_RE = re.compile(r"[+-]?\d+")


def extract_boxed(response: str) -> str | None:
    """Content of the last `\\boxed{...}` (braces balanced), or None."""
    start = response.rfind(_BOX_OPEN)
    if start < 0:
        return None
    i = start + len(_BOX_OPEN)
    depth = 1
    for j in range(i, len(response)):
        ch = response[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return response[i:j]
    return None


def verify(response: str, ground_truth: str) -> float:
    """1.0 if the last boxed answer is the integer `ground_truth`, else 0.0; never raises."""
    try:
        content = extract_boxed(response)
        if content is None:
            return 0.0
        content = content.strip()
        truth = str(ground_truth).strip()
        if not _INT_RE.fullmatch(content) or not _INT_RE.fullmatch(truth):
            return 0.0
        return 1.0 if int(content) == int(truth) else 0.0
    except Exception:  # noqa: BLE001  (a reward function must not take a training step down)
        return 0.0


def count_solution_paths(problem: Problem) -> int:
    """Distinct correct solution texts: permutations of the operand multiset, k!/prod(dup!)."""
    count = math.factorial(len(problem.operands))
    for dup in Counter(problem.operands).values():
        count //= math.factorial(dup)
    return count


def distinct_paths(responses: Iterable[str], ground_truth: str) -> int:
    """How many distinct texts among `responses` the verifier accepts."""
    return len({r for r in responses if verify(r, ground_truth) == 1.0})
