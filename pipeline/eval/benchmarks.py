"""The math benchmarks of the GFT paper's tables (``../shared/data/math_eval/*.jsonl``).

Each file keeps its question and its gold answer in its own fields; a :class:`Benchmark` knows
which, and turns every line into a question and a ground-truth string the verifiers read.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import DataError
from pipeline.rewards.verifiers import CHOICE_LETTERS, last_boxed

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CHOICE_INSTRUCTION = "Answer with the letter of the right choice, within \\boxed{}."


@dataclass(frozen=True)
class BenchmarkItem:
    index: int
    question: str  # the full user message, instruction included
    ground_truth: str
    data_source: str


def _first(row: dict, *fields: str):
    for name in fields:
        if row.get(name) not in (None, ""):
            return row[name]
    raise KeyError(" / ".join(fields))


def _plain_number(value) -> str:
    """``27.0`` -> ``27``; other answers as written."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _minerva_answer(row: dict) -> str:
    answer = last_boxed(row["solution"])
    if answer is None:
        raise KeyError("solution (no \\boxed{} answer)")
    return answer


def _olympiad_answer(row: dict) -> str:
    """``final_answer`` is a Python list rendered as a string: ``"['$x=3$', '$y=1$']"``."""
    raw = row["final_answer"]
    answers = raw if isinstance(raw, list) else ast.literal_eval(raw)
    return ", ".join(a.strip().strip("$") for a in answers)


def _choices(row: dict) -> list[str]:
    raw = row["choices"]
    return list(raw) if isinstance(raw, list) else ast.literal_eval(raw)


def _choice_question(row: dict) -> str:
    lines = [row["question"].strip()]
    lines += [f"{CHOICE_LETTERS[i]}. {choice}" for i, choice in enumerate(_choices(row))]
    return "\n".join(lines) + "\n" + CHOICE_INSTRUCTION


def _choice_answer(row: dict) -> str:
    index = int(row["answer"])
    if not 0 <= index < len(_choices(row)):
        raise KeyError(f"answer (index {index} outside the {len(_choices(row))} choices)")
    return CHOICE_LETTERS[index]


def _math_question(*fields: str) -> Callable[[dict], str]:
    return lambda row: f"{str(_first(row, *fields)).strip()}\n{MATH_INSTRUCTION}"


@dataclass
class BenchmarkSet:
    name: str
    items: list[BenchmarkItem]
    skipped: list[str]  # items without a usable ground truth: "line 168: empty answer"


@dataclass(frozen=True)
class Benchmark:
    name: str
    question: Callable[[dict], str]
    answer: Callable[[dict], str]

    @property
    def data_source(self) -> str:
        return f"math_eval/{self.name}"


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark("math_oai", _math_question("problem"), lambda r: str(r["answer"])),
        Benchmark("amc23", _math_question("problem", "question"), lambda r: _plain_number(r["answer"])),
        Benchmark("aime24", _math_question("problem", "question"), lambda r: _plain_number(r["answer"])),
        Benchmark("gaokao2023en", _math_question("question"), lambda r: str(r["answer"])),
        Benchmark("minerva_math", _math_question("problem"), _minerva_answer),
        Benchmark("olympiadbench", _math_question("question"), _olympiad_answer),
        Benchmark("mmlu_stem", _choice_question, _choice_answer),
    ]
}


def benchmark_for(path: str | Path) -> Benchmark:
    """The benchmark a ``.jsonl`` file holds, known by its file name (``amc23.jsonl``)."""
    name = Path(path).stem
    if name not in BENCHMARKS:
        raise DataError(f"{path}: unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def read_benchmark(path: str | Path) -> BenchmarkSet:
    """Every line of a benchmark file as a question and its ground truth. Items whose gold answer
    is empty cannot be scored and are skipped, each named in ``skipped``; a line that is not JSON
    or lacks its question is a :class:`DataError`."""
    path = Path(path)
    benchmark = benchmark_for(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err}") from None
    items, skipped = [], []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        where = f"{path}: line {index + 1}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not JSON: {err}") from None
        try:
            question = benchmark.question(row)
        except KeyError as err:
            raise DataError(f"{where}: field '{err.args[0]}' is missing") from None
        try:
            answer = benchmark.answer(row).strip()
        except (KeyError, ValueError, SyntaxError) as err:
            skipped.append(f"line {index + 1}: no usable answer ({err})")
            continue
        if not answer:
            skipped.append(f"line {index + 1}: empty answer")
            continue
        items.append(BenchmarkItem(index, question, answer, benchmark.data_source))
    if not items:
        raise DataError(f"{path}: no item with a usable answer")
    return BenchmarkSet(benchmark.name, items, skipped)
