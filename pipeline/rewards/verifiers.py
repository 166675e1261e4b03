"""The built-in verifiers: the final answer of a response against the ground truth.

A response's final answer is its last ``\\boxed{...}``, or else the text after GSM8K's last
``####``; with the ``strict`` extraction (the default) a response without one scores 0, so no
verifier rewards a stray number in the reasoning. The ``lenient`` extraction then looks further,
as the GFT authors' verifier does (Qwen2.5-Math's evaluation harness, in their verl fork): the
text after the last "the answer is" or "final answer is", else the last number. Answers are
compared without percent signs, degree marks, dollar signs or a trailing unit (``10\\%`` is
``10``, ``5 \\text{cm}`` is ``5``), as that harness compares them, then by ``math-verify``
(equivalent numbers, fractions, LaTeX expressions, sets and intervals). Its own timeouts use
``signal.alarm``, which only works in a process's main thread, so they are switched off here:
``pipeline.rewards.guard`` bounds every call from outside instead.
"""

from __future__ import annotations

import logging
import math
import re

from pipeline.embedded import task as embedded_task

MULTIPLE_CHOICE_PREFIX = "mmlu"  # data sources whose ground truth is a choice letter
CHOICE_LETTERS = "ABCDEFGHIJ"

_NUMBER_WITH_THOUSANDS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")
_SCIENTIFIC = re.compile(r"(-?\d+(?:\.\d+)?)\s*\\(?:times|cdot)\s*10\^\{?\s*(-?\d+)\s*\}?")
_HASH_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)
_STATED_ANSWER = re.compile(r"(?:[Tt]he|[Ff]inal) answer is[:\s]*")
_LAST_NUMBER = re.compile(r"-?\d*\.?\d+")
_TRAILING_TEXT_UNIT = re.compile(r"^(.+?)\s*\\(?:text|mbox|mathrm)\{[^{}]*\}$")
_NUMBER_AND_WORDS = re.compile(r"^(-?[\d.,]*\d)\s+[A-Za-z][A-Za-z .]*$")
_UNIT_MARKS = ("\\%", "%", "^{\\circ}", "^\\circ", "\\$")
EXTRACTIONS = ("strict", "lenient")
DEFAULT_EXTRACTION = "strict"
_CHOICE = re.compile(r"^\(?\s*([A-J])\s*\)?(?:[.:)]|\s|$)")


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; None if none
    is closed."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    open_brace = text.find("{", start)
    if open_brace < 0:
        # "\boxed 5": the argument is the next token
        rest = text[start + len("\\boxed") :].strip().split()
        return rest[0].rstrip("$.") if rest else None
    depth = 0
    for i in range(open_brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_brace + 1 : i].strip()
    return None


def extract_final_answer(text: str, extraction: str = DEFAULT_EXTRACTION) -> str | None:
    """The last ``\\boxed{}`` content, else the text after the last ``####``; then, ``lenient``,
    what follows the last "the answer is" or "final answer is" (to the end of its line), else
    the last number; else None."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    hashes = _HASH_ANSWER.findall(text)
    if hashes:
        return hashes[-1]
    if extraction == "strict":
        return None
    stated = list(_STATED_ANSWER.finditer(text))
    if stated:
        return text[stated[-1].end() :].split("\n")[0].strip()
    numbers = _LAST_NUMBER.findall(text.replace(",", ""))
    return numbers[-1] if numbers else None


def _strip_math_delimiters(answer: str) -> str:
    answer = answer.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if answer.startswith(left) and answer.endswith(right) and len(answer) >= len(left) + len(right):
            return answer[len(left) : len(answer) - len(right)].strip()
    return answer


def _strip_units(answer: str) -> str:
    """Percent signs, degree marks and dollar signs off, then a trailing ``\\text{}`` unit, or
    words after a number (``5 \\text{ cm}``, ``12 dollars``), when something is left before it."""
    for mark in _UNIT_MARKS:
        answer = answer.replace(mark, "")
    answer = answer.strip()
    for pattern in (_TRAILING_TEXT_UNIT, _NUMBER_AND_WORDS):
        if unit := pattern.fullmatch(answer):
            answer = unit.group(1).strip()
    return answer


def normalize_answer(answer: str) -> str:
    """Math delimiters and units off, a trailing full stop dropped, and a plain number written
    plainly: ``1,080`` -> ``1080``, ``2.9 \\times 10^{-19}`` -> ``2.9e-19``, ``10\\%`` -> ``10``."""
    answer = _strip_units(_strip_math_delimiters(answer).rstrip(".").strip()).rstrip(".").strip()
    if _NUMBER_WITH_THOUSANDS.fullmatch(answer):
        return answer.replace(",", "")
    if scientific := _SCIENTIFIC.fullmatch(answer):
        return f"{scientific.group(1)}e{scientific.group(2)}"
    return answer


def _as_number(answer: str) -> float | None:
    try:
        return float(answer)
    except ValueError:
        return None


def answers_match(predicted: str, gold: str) -> bool:
    """Whether two final answers are equivalent: same text, same number, or math-verify equal."""
    predicted, gold = normalize_answer(predicted), normalize_answer(gold)
    if not predicted or not gold:
        return False
    if predicted == gold:
        return True
    numbers = _as_number(predicted), _as_number(gold)
    if None not in numbers:
        return math.isclose(*numbers, rel_tol=1e-6)
    from math_verify import parse, verify

    gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
    predicted_parsed = parse(f"\\boxed{{{predicted}}}", parsing_timeout=None)
    if not gold_parsed or not predicted_parsed:
        return False
    return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=None))


def math_score(solution_str: str, ground_truth: str, extraction: str = DEFAULT_EXTRACTION) -> float:
    answer = extract_final_answer(solution_str, extraction)
    return float(answer is not None and answers_match(answer, ground_truth))


def choice_score(solution_str: str, ground_truth: str) -> float:
    """A multiple-choice answer: the boxed letter (``B``, ``(B)``, ``B. text``) equals the gold letter."""
    answer = extract_final_answer(solution_str)
    if answer is None:
        return 0.0
    found = _CHOICE.match(normalize_answer(answer).replace("\\text{", "").replace("}", ""))
    return float(found is not None and found.group(1) == ground_truth.strip().upper())


def default_compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info=None,
                          extraction: str = DEFAULT_EXTRACTION) -> float:
    """The built-in verifier for a data source: the embedded task's own checker (its retain
    family's too), letter matching for multiple choice (``mmlu*``), and the math verifier, with
    ``extraction``, for everything else."""
    if data_source in (embedded_task.DATA_SOURCE, embedded_task.RETAIN_DATA_SOURCE):
        return embedded_task.verify(solution_str, ground_truth)
    if data_source.split("/")[-1].startswith(MULTIPLE_CHOICE_PREFIX):
        return choice_score(solution_str, ground_truth)
    return math_score(solution_str, ground_truth, extraction)


# math-verify warns on every call that its signal-based timeouts are off; the guard replaces them
logging.getLogger("math_verify").setLevel(logging.ERROR)
