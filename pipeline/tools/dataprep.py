"""Data tools run before training: convert raw GSM8K into verl's parquet layout, and check a
verl-layout file, reporting every problem at once rather than the first one a run trips over.

The converted rows carry one expert response each (GSM8K's worked solution, ending in the same
``\\boxed{}`` answer the prompt asks for), which is what GFT's expert group member needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from pipeline.core.data import (
    DATA_SOURCE,
    RowChecker,
    candidates,
    decode_text,
    problems_error,
    read_table,
    table_problems,
    table_rows,
    verl_schema,
    write_parquet_atomic,
)
from pipeline.eval.benchmarks import MATH_INSTRUCTION

GSM8K_SOURCE = "openai/gsm8k"
REPORT_LINES = 50

_FINAL_LINE = re.compile(r"(?:^|\n)####[ \t]*(.*?)\s*\Z")  # the last line, "#### 1,080"
_NUMBER = re.compile(r"-?(\d+|\d{1,3}(,\d{3})+)(\.\d+)?")  # thousands separators allowed
_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations, "<<48/2=24>>"

GSM8K_SCHEMA = verl_schema(
    [
        ("split", pa.string()),
        ("index", pa.int64()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("expert_responses", pa.list_(pa.string())),
    ]
)


def _gsm8k_row(question, answer, split: str, index: int) -> tuple[dict | None, list[str]]:
    """(the verl row, None when there are problems, and the problems)."""
    problems = []
    question, answer = decode_text(question, "question", problems), decode_text(answer, "answer", problems)
    if not isinstance(question, str) or not question.strip():
        problems.append("field 'question' is missing or empty")
    final = _FINAL_LINE.search(answer) if isinstance(answer, str) else None
    if not (final and _NUMBER.fullmatch(final.group(1))):
        problems.append("field 'answer' does not end with a line '#### <number>'")
    if problems:
        return None, problems
    ground_truth = final.group(1).replace(",", "")
    solution = _CALCULATOR.sub("", answer[: final.start()]).strip()
    expert = "\n".join(filter(None, [solution, f"The final answer is $\\boxed{{{ground_truth}}}$."]))
    row = {
        "data_source": GSM8K_SOURCE,
        "prompt": [{"role": "user", "content": f"{question.strip()}\n{MATH_INSTRUCTION}"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {
            "split": split,
            "index": index,
            "question": question,
            "answer": answer,
            "expert_responses": [expert],
        },
    }
    return row, []


def convert_gsm8k(source: str | Path, out: str | Path, split: str | None = None) -> int:
    """Raw GSM8K parquet (``question``, ``answer``) -> verl-layout parquet at ``out``; returns the
    number of rows written. Any bad row is a DataError naming file, row and field, and then
    nothing is written."""
    source = Path(source)
    table = read_table(source)
    missing = [name for name in ("question", "answer") if name not in table.column_names]
    if missing or table.num_rows == 0:
        raise problems_error(source, [f"missing column {name!r}" for name in missing] or ["no rows"])
    split = split or source.stem
    rows, problems = [], []
    for index, raw in enumerate(table_rows(source, table.select(["question", "answer"]))):
        row, row_problems = _gsm8k_row(raw["question"], raw["answer"], split, index)
        rows.append(row)
        problems += [f"row {index}: {problem}" for problem in row_problems]
    if problems:
        raise problems_error(source, problems)
    write_parquet_atomic(rows, out, schema=GSM8K_SCHEMA)
    return len(rows)


@dataclass
class DatasetReport:
    rows: int
    problems: list[str] = field(default_factory=list)  # "row 12: field '...' ...", or file-level
    # how many rows hold how many candidates: {candidates per row: rows}
    expert_candidates: dict[int, int] = field(default_factory=dict)
    teacher_candidates: dict[int, int] = field(default_factory=dict)
    longest_prompt: int | None = None  # chat-templated tokens; only with a tokenizer


def check_dataset(path: str | Path, tokenizer=None, max_prompt_length: int | None = None,
                  reward_fn_key: str = DATA_SOURCE) -> DatasetReport:
    """Every problem in a verl-layout parquet file, each naming its row and field, by the same
    checks ``read_prompt_file`` applies, and how many expert and teacher candidates its rows hold
    (in whichever layout, ``pipeline.core.data.candidates``). An unreadable file is a DataError."""
    table = read_table(path)
    report = DatasetReport(rows=table.num_rows, problems=table_problems(table, reward_fn_key))
    check = RowChecker(tokenizer, max_prompt_length, reward_fn_key)
    for index, raw in enumerate(table_rows(path, table)):
        row, row_problems, prompt_ids = check(raw)
        report.problems += [f"row {index}: {problem}" for problem in row_problems]
        expert, teacher = candidates(row.get("extra_info"))
        for counts, found in ((report.expert_candidates, expert), (report.teacher_candidates, teacher)):
            counts[len(found)] = counts.get(len(found), 0) + 1
        if prompt_ids is not None:
            report.longest_prompt = max(report.longest_prompt or 0, len(prompt_ids))
    return report


def format_report(report: DatasetReport, path: str | Path) -> str:
    """A summary line, then the problems, at most REPORT_LINES of them."""
    def per_row(counts: dict[int, int]) -> str:
        return ", ".join(f"{n} in {rows} row{'' if rows == 1 else 's'}" for n, rows in sorted(counts.items())) or "none"

    summary = (f"{path}: {report.rows} rows; expert candidates per row: {per_row(report.expert_candidates)}; "
               f"teacher candidates per row: {per_row(report.teacher_candidates)}")
    if report.longest_prompt is not None:
        summary += f", longest prompt {report.longest_prompt} tokens"
    count = len(report.problems)
    summary += f": {count} problem{'' if count == 1 else 's'}" if count else ": no problems"
    lines = [summary, *(f"  {problem}" for problem in report.problems[:REPORT_LINES])]
    if count > REPORT_LINES:
        lines.append(f"  ... and {count - REPORT_LINES} more")
    return "\n".join(lines)
