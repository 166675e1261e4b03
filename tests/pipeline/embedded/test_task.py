"""The chain-addition task: generation, expert, teacher, verifier, path counts."""

from __future__ import annotations

import itertools
import math
import re
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.embedded.task import (
    Problem,
    TaskConfig,
    Teacher,
    count_solution_paths,
    distinct_paths,
    expert_solution,
    generate_problems,
    problem_split,
    render_path,
    verify,
)

TASK_PY = Path(__file__).resolve().parents[3] / "pipeline" / "embedded" / "task.py"
STEP_RE = re.compile(r"^(\d+)\+(\d+)=(-?\d+)$")


def parse_path(text: str) -> tuple[list[tuple[int, int, int]], int]:
    """Steps (left, operand, written result) and the boxed total of a rendered path."""
    *step_lines, box_line = text.split("\n")
    steps = []
    for line in step_lines:
        match = STEP_RE.match(line)
        assert match, f"malformed step {line!r} in {text!r}"
        steps.append(tuple(int(g) for g in match.groups()))
    box = re.fullmatch(r"\\boxed\{(-?\d+)\}", box_line)
    assert box, f"malformed final line {box_line!r}"
    return steps, int(box.group(1))


# ---- configuration and problems ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_terms": 1}, "min_terms must be >= 2"),
        ({"min_terms": 5, "max_terms": 4}, "must be <= max_terms"),
        ({"ood_min_terms": 7, "ood_max_terms": 6}, "must be <= ood_max_terms"),
        ({"max_operand": 0}, "max_operand must be in \\[1, 1000000\\]"),
        ({"max_terms": 65}, "max_terms and ood_max_terms must be <= 64"),
        ({"seed": -1}, "seed must be in \\[0, 2\\*\\*32\\)"),
        ({"teacher_error_rate": -0.1}, "teacher_error_rate"),
        ({"teacher_error_rate": 1.5}, "teacher_error_rate"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaskConfig(**kwargs)


def test_problem_text_and_answer():
    problem = Problem((3, 5, 9))
    assert problem.answer == 17
    assert problem.ground_truth == "17"
    assert problem.question == "Compute 3+5+9."


def test_render_path_matches_the_documented_format():
    assert render_path((9, 3, 5)) == "9+3=12\n12+5=17\n\\boxed{17}"
    assert expert_solution(Problem((3, 5, 9))) == "3+5=8\n8+9=17\n\\boxed{17}"
    # A slip in the first step is carried into the second step and the final answer.
    assert render_path((9, 3, 5), slip=(0, 2)) == "9+3=14\n14+5=19\n\\boxed{19}"
    with pytest.raises(ValueError):
        render_path((9, 3, 5), slip=(2, 1))
    with pytest.raises(ValueError):
        render_path((9, 3, 5), slip=(0, 0))


def test_same_seed_same_problems_and_splits_differ(task_config):
    a = generate_problems(task_config, "train", 300)
    assert a == generate_problems(TaskConfig(), "train", 300)
    assert generate_problems(task_config, "train", 100) == a[:100]  # a prefix, not a reshuffle
    assert a != generate_problems(TaskConfig(seed=1), "train", 300)
    assert a != generate_problems(task_config, "test", 300)
    assert generate_problems(task_config, "test", 300) != generate_problems(task_config, "ood", 300)


def test_generation_is_independent_of_python_hash_salt():
    # Load task.py on its own (no package import) in interpreters with different hash salts.
    code = (
        "import importlib.util, sys;"
        f"spec = importlib.util.spec_from_file_location('task', {str(TASK_PY)!r});"
        "m = importlib.util.module_from_spec(spec); sys.modules['task'] = m; spec.loader.exec_module(m);"
        "print([p.operands for s in m.SPLITS for p in m.generate_problems(m.TaskConfig(val_fraction=0.1), s, 20)]);"
        "print(m.Teacher(0.3, 5).solve_many(m.Problem((1, 2, 3, 4)), 5))"
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": salt},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for salt in ("1", "2")
    ]
    assert outputs[0] == outputs[1]
    assert outputs[0].strip()


def test_test_split_shares_no_problem_with_train(task_config):
    train = generate_problems(task_config, "train", 5000)
    test = generate_problems(task_config, "test", 1000)
    train_multisets = {tuple(sorted(p.operands)) for p in train}
    test_multisets = {tuple(sorted(p.operands)) for p in test}
    assert train_multisets.isdisjoint(test_multisets)
    assert {p.operands for p in train}.isdisjoint({p.operands for p in test})
    assert len(test_multisets) > 100  # the held-out side is not degenerate


def test_a_val_split_shares_no_problem_with_train_or_test_and_leaves_test_as_it_was(task_config):
    with_val = replace(task_config, val_fraction=0.15)
    splits = {split: generate_problems(with_val, split, n) for split, n in (("train", 5000), ("val", 1000), ("test", 1000))}
    multisets = {split: {tuple(sorted(p.operands)) for p in problems} for split, problems in splits.items()}
    assert multisets["val"].isdisjoint(multisets["train"]) and multisets["val"].isdisjoint(multisets["test"])
    assert multisets["train"].isdisjoint(multisets["test"])
    assert len(multisets["val"]) > 50  # not degenerate
    assert splits["test"] == generate_problems(task_config, "test", 1000)  # val is carved from train's side
    assert {problem_split(task_config, m) for m in multisets["val"]} == {"train"}
    with pytest.raises(ValueError, match="a val split needs TaskConfig.val_fraction > 0"):
        generate_problems(task_config, "val", 1)
    with pytest.raises(ValueError, match=r"val_fraction must be a number in \[0, 0.5\]"):
        replace(task_config, val_fraction=0.6)


def test_term_counts_and_operands_lie_in_their_ranges(task_config):
    for split, (lo, hi) in (
        ("train", (task_config.min_terms, task_config.max_terms)),
        ("test", (task_config.min_terms, task_config.max_terms)),
        ("ood", (task_config.ood_min_terms, task_config.ood_max_terms)),
    ):
        problems = generate_problems(task_config, split, 600)
        lengths = Counter(len(p.operands) for p in problems)
        assert set(lengths) == set(range(lo, hi + 1)), (split, lengths)
        assert all(1 <= x <= task_config.max_operand for p in problems for x in p.operands)
        assert {x for p in problems for x in p.operands} == set(range(1, task_config.max_operand + 1))


def test_degenerate_problem_space_fails_loudly():
    tiny = TaskConfig(min_terms=2, max_terms=2, max_operand=1, seed=0)
    with pytest.raises(ValueError, match="too small"):
        for split in ("train", "test"):
            generate_problems(tiny, split, 1)


# ---- expert and verifier ----------------------------------------------------------------------


def test_verifier_accepts_the_expert_on_every_problem(task_config):
    problems = [
        p
        for split, n in (("train", 1000), ("test", 500), ("ood", 500))
        for p in generate_problems(task_config, split, n)
    ]
    assert len(problems) == 2000
    assert all(verify(expert_solution(p), p.ground_truth) == 1.0 for p in problems)


@pytest.mark.parametrize(
    "response, truth, expected",
    [
        ("3+5=8\n8+9=17\n\\boxed{17}", "17", 1.0),
        ("\\boxed{ 17 }", "17", 1.0),
        ("first \\boxed{16} then \\boxed{17}", "17", 1.0),  # the last box counts
        ("3+5=8\n8+9=18\n\\boxed{18}", "17", 0.0),  # wrong answer
        ("\\boxed{17} on second thought \\boxed{16}", "17", 0.0),
        ("3+5=8\n8+9=17\n17", "17", 0.0),  # no box
        ("the answer is 17", "17", 0.0),
        ("", "17", 0.0),
        ("\\boxed{}", "17", 0.0),
        ("\\boxed{17", "17", 0.0),  # unclosed
        ("\\boxed{17.0}", "17", 0.0),  # not an integer
        ("\\boxed{seventeen}", "17", 0.0),
        ("\\boxed{{17}}", "17", 0.0),
        ("}{\\\\boxed\x00\ufffd{{{", "17", 0.0),  # junk
        ("\\boxed{17}", "not a number", 0.0),
    ],
)
def test_verifier_cases(response, truth, expected):
    assert verify(response, truth) == expected


def test_verifier_never_raises_on_non_strings():
    assert verify(None, "17") == 0.0  # type: ignore[arg-type]
    assert verify(b"\\boxed{17}", "17") == 0.0  # type: ignore[arg-type]
    assert verify("\\boxed{17}", 17) == 1.0  # type: ignore[arg-type]


# ---- teacher ----------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 1.0])
def test_teacher_error_rate_matches_its_setting(task_config, p):
    problems = generate_problems(task_config, "train", 1000)
    teacher = Teacher(p, seed=7)
    responses = [(prob, r) for prob in problems for r in teacher.solve_many(prob, 4)]
    n = len(responses)
    rejected = sum(verify(r, prob.ground_truth) == 0.0 for prob, r in responses)
    measured = rejected / n
    print(f"\nteacher error rate setting {p}: measured {measured:.4f} over {n} responses")
    if p in (0.0, 1.0):
        assert measured == p
    else:
        assert abs(measured - p) <= 4 * math.sqrt(p * (1 - p) / n)


def test_teacher_paths_are_well_formed_with_at_most_one_carried_slip(task_config):
    teacher = Teacher(0.5, seed=3)
    slips = Counter()
    for problem in generate_problems(task_config, "ood", 300):
        for response in teacher.solve_many(problem, 3):
            steps, boxed = parse_path(response)
            used = [steps[0][0]] + [operand for _, operand, _ in steps]
            assert sorted(used) == sorted(problem.operands)  # a permutation of the operands
            for (_, _, prev_result), (left, _, _) in itertools.pairwise(steps):
                assert left == prev_result  # each step continues from the written total
            assert boxed == steps[-1][2]
            errors = [
                result - (left + operand) for left, operand, result in steps if result != left + operand
            ]
            assert len(errors) <= 1
            assert all(1 <= abs(d) <= 3 for d in errors)
            assert all(result >= 0 for _, _, result in steps)
            # A slip is exactly what makes the verifier reject a teacher response.
            assert (verify(response, problem.ground_truth) == 0.0) == bool(errors)
            slips.update(errors)
    assert set(slips) == {-3, -2, -1, 1, 2, 3}


def test_teacher_is_deterministic_for_a_seed():
    problem = Problem((4, 7, 1, 8))
    assert Teacher(0.3, seed=11).solve_many(problem, 20) == Teacher(0.3, seed=11).solve_many(problem, 20)
    assert Teacher(0.3, seed=11).solve_many(problem, 20) != Teacher(0.3, seed=12).solve_many(problem, 20)
    with pytest.raises(ValueError):
        Teacher(1.2)


def test_teacher_paths_are_diverse(task_config):
    teacher = Teacher(task_config.teacher_error_rate, seed=1)
    problems = [p for p in generate_problems(task_config, "train", 400) if len(set(p.operands)) >= 3][:100]
    assert len(problems) == 100
    for problem in problems:
        found = distinct_paths(teacher.solve_many(problem, 40), problem.ground_truth)
        assert 1 < found <= count_solution_paths(problem)


def test_teacher_orders_are_uniform_over_permutations():
    problem = Problem((1, 2, 3))
    n = 6000
    counts = Counter(Teacher(0.0, seed=2).solve_many(problem, n))
    assert len(counts) == count_solution_paths(problem) == 6
    expected = n / 6
    for text, count in counts.items():
        assert abs(count - expected) <= 4 * math.sqrt(n * (1 / 6) * (5 / 6)), (text, count)


# ---- solution-path counts ---------------------------------------------------------------------


def test_count_solution_paths_matches_brute_force(task_config):
    problems = generate_problems(task_config, "train", 300) + [
        Problem(ops)
        for ops in [(1, 1), (2, 2, 2), (1, 1, 2, 2), (3, 3, 3, 4), (1, 2, 3, 4, 5), (5, 5, 1, 5, 2)]
    ]
    for problem in problems:
        brute = len({render_path(order) for order in itertools.permutations(problem.operands)})
        assert count_solution_paths(problem) == brute, problem


def test_report_distinct_path_distribution_of_train(task_config):
    problems = generate_problems(task_config, "train", 4096)
    counts = Counter(count_solution_paths(p) for p in problems)
    by_terms = {
        k: Counter(count_solution_paths(p) for p in problems if len(p.operands) == k)
        for k in range(task_config.min_terms, task_config.max_terms + 1)
    }
    print(f"\ndistinct solution paths per train problem (n={len(problems)}):")
    for paths, number in sorted(counts.items()):
        print(f"  {paths:3d} paths: {number:5d} problems ({number / len(problems):6.1%})")
    for k, dist in by_terms.items():
        print(f"  {k} terms: " + ", ".join(f"{paths}:{number}" for paths, number in sorted(dist.items())))
    mean = sum(paths * number for paths, number in counts.items()) / len(problems)
    print(f"  mean {mean:.2f} paths per problem")
    assert set(counts) <= {1, 2, 3, 4, 6, 12, 24}
    # One path only when every operand is the same value.
    assert all(len(set(p.operands)) == 1 for p in problems if count_solution_paths(p) == 1)
    assert counts[1] / len(problems) < 0.1
    assert mean > 5
