"""The paper's benchmark files, read with their own fields and judged by the built-in verifier."""

import json
from contextlib import closing

import pytest

from pipeline.core.errors import DataError
from pipeline.eval.benchmarks import BENCHMARKS, read_benchmark
from pipeline.rewards.guard import RewardGuard
from pipeline.rewards.verifiers import normalize_answer

# rows per file (../shared/data/README.md), less the items without a gold answer
EXPECTED_ITEMS = {"math_oai": 500, "amc23": 40, "aime24": 30, "gaokao2023en": 383, "minerva_math": 272,
                  "olympiadbench": 675, "mmlu_stem": 3018}


@pytest.fixture(scope="module")
def benchmark_sets(shared_data):
    return {name: read_benchmark(shared_data / "math_eval" / f"{name}.jsonl") for name in BENCHMARKS}


def test_every_file_loads_with_its_own_fields(benchmark_sets):
    assert {name: len(s.items) for name, s in benchmark_sets.items()} == EXPECTED_ITEMS
    assert benchmark_sets["gaokao2023en"].skipped == ["line 168: empty answer", "line 193: empty answer"]
    assert all(not s.skipped for name, s in benchmark_sets.items() if name != "gaokao2023en")
    first = {name: s.items[0] for name, s in benchmark_sets.items()}
    assert first["amc23"].ground_truth == "27"  # stored as the float 27.0
    assert first["mmlu_stem"].ground_truth == "C"  # stored as the index 2
    assert "\nA. maintain the population" in first["mmlu_stem"].question
    assert first["math_oai"].question.endswith("within \\boxed{}.")
    assert first["minerva_math"].ground_truth == "1.6"  # the last \boxed{} of the solution
    olympiad = {item.index: item.ground_truth for item in benchmark_sets["olympiadbench"].items}
    assert olympiad[3] == "2"  # "['2']" in final_answer


def _verdicts(guard, items, responses):
    calls = [(item.data_source, response, item.ground_truth, None) for item, response in zip(items, responses)]
    report = guard.score(calls)
    assert report.failures == 0 and report.timeouts == 0, report.first_problem
    return report.rewards


@pytest.mark.slow
def test_the_verifier_accepts_the_gold_answer_and_rejects_another(benchmark_sets):
    """>= 99% of items per file score 1 with their gold answer boxed (items without a gold answer
    count as failures) and 0 with the next item's different answer; the failures are printed."""
    with closing(RewardGuard(num_workers=2, timeout_s=30)) as guard:
        for name, benchmark in benchmark_sets.items():
            items = benchmark.items
            gold = _verdicts(guard, items, [f"So the answer is $\\boxed{{{i.ground_truth}}}$." for i in items])
            others = []
            for position, item in enumerate(items):
                other = next(o for o in items[position + 1 :] + items
                             if normalize_answer(o.ground_truth) != normalize_answer(item.ground_truth))
                others.append(other.ground_truth)
            wrong = _verdicts(guard, items, [f"\\boxed{{{answer}}}" for answer in others])
            rejected_gold = [f"line {i.index + 1}: gold {i.ground_truth!r}" for i, r in zip(items, gold) if r != 1.0]
            accepted_other = [f"line {i.index + 1}: {o!r} accepted for gold {i.ground_truth!r}"
                              for i, o, r in zip(items, others, wrong) if r != 0.0]
            total = len(items) + len(benchmark.skipped)
            print(f"\n{name}: gold accepted {total - len(rejected_gold) - len(benchmark.skipped)}/{total}, "
                  f"other answer rejected {len(items) - len(accepted_other)}/{len(items)}")
            for line in benchmark.skipped + rejected_gold + accepted_other:
                print(f"  {line}")
            assert len(rejected_gold) + len(benchmark.skipped) <= 0.01 * total, rejected_gold
            assert len(accepted_other) <= 0.01 * len(items), accepted_other


def test_a_malformed_line_names_file_line_and_field(tmp_path):
    path = tmp_path / "amc23.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "answer": 2}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"amc23.jsonl: line 2: not JSON"):
        read_benchmark(path)
    path.write_text(json.dumps({"answer": 2}) + "\n")
    with pytest.raises(DataError, match=r"amc23.jsonl: line 1: field 'problem / question' is missing"):
        read_benchmark(path)


def test_an_unknown_benchmark_file_is_refused(tmp_path):
    path = tmp_path / "mystery.jsonl"
    path.write_text("{}\n")
    with pytest.raises(DataError, match=r"unknown benchmark 'mystery'; known: math_oai, amc23"):
        read_benchmark(path)
