"""The built-in verifiers: final-answer extraction and equivalence of answer forms."""

import pytest

from pipeline.embedded import DATA_SOURCE
from pipeline.rewards.verifiers import answers_match, default_compute_score, extract_final_answer, last_boxed


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so \\boxed{3} and then \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),  # the last box wins
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # nested braces are balanced
        ("$\\boxed 5$", "5"),
        ("48+24 = 72\n#### 72", "72"),  # GSM8K's answer line
        ("#### 1\nmore\n#### 1,080 ", "1,080"),
        ("the answer is 7", None),  # no final answer: nothing to reward
        ("\\boxed{unclosed", None),
    ],
)
def test_extract_final_answer(text, answer):
    assert extract_final_answer(text) == answer


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so \\boxed{3} and the answer is 4", "3"),  # a box still wins
        ("5 apples, so the answer is 7.\nDone: 8", "7."),  # the stated answer, to the end of its line
        ("The final answer is $\\frac{1}{2}$", "$\\frac{1}{2}$"),
        ("first 3, then 1,250 and -0.5 left", "-0.5"),  # else the last number (thousands joined)
        ("no number at all", None),
    ],
)
def test_lenient_extraction_falls_back_as_the_reference_verifier_does(text, answer):
    assert extract_final_answer(text, "lenient") == answer


def test_last_boxed_prefers_the_last_of_boxed_and_fbox():
    assert last_boxed("\\boxed{1} \\fbox{2}") == "2"


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        ("0.5", "\\frac{1}{2}"),
        ("1/2", "\\frac12"),
        ("27", "27.0"),
        ("1,080", "1080"),
        ("$-1-\\sqrt{3}$", "-1-\\sqrt{3}"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("x=3", "3"),
        ("[-2,1)", "[-2, 1)"),
        ("2.88e-19", "2.88 \\times 10^{-19}"),
        ("10\\%", "10"),  # percent signs, units and marks are not part of the answer
        ("5 \\text{ cm}", "5"),
        ("12 dollars", "12"),
        ("\\$1,200", "1200"),
        ("90^\\circ", "90"),
    ],
)
def test_equivalent_forms_match(predicted, gold):
    assert answers_match(predicted, gold)


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [("0.6", "\\frac{1}{2}"), ("28", "27.0"), ("5.89e-7", "7.4e-12"), ("\\sqrt{2}", "\\sqrt{3}"), ("", "1"),
     ("11\\%", "10"), ("\\text{cm}", "5")],
)
def test_different_answers_do_not_match(predicted, gold):
    assert not answers_match(predicted, gold)


def test_dispatch_by_data_source():
    assert default_compute_score(DATA_SOURCE, "1+2=3\n\\boxed{3}", "3") == 1.0
    assert default_compute_score(DATA_SOURCE, "1+2=4\n\\boxed{4}", "3") == 0.0
    assert default_compute_score("openai/gsm8k", "24+48=72\n#### 72", "72") == 1.0
    assert default_compute_score("openai/gsm8k", "I think it is 72", "72") == 0.0  # no final answer
    assert default_compute_score("math_eval/mmlu_stem", "\\boxed{(B)}", "B") == 1.0
    assert default_compute_score("math_eval/mmlu_stem", "\\boxed{B. Cyclic AMP}", "B") == 1.0
    assert default_compute_score("math_eval/mmlu_stem", "\\boxed{C}", "B") == 0.0


def test_the_extraction_decides_whether_a_response_without_a_final_answer_scores():
    response = "48 + 24 = 72, so the answer is 72 clips."
    assert default_compute_score("openai/gsm8k", response, "72") == 0.0  # strict: no \\boxed{}, no ####
    assert default_compute_score("openai/gsm8k", response, "72", extraction="lenient") == 1.0
    assert default_compute_score("math", "\\boxed{10\\%}", "10") == 1.0  # either way
    # the embedded task keeps its own checker, which wants its boxed answer
    assert default_compute_score(DATA_SOURCE, "1+2=3, the answer is 3", "3", extraction="lenient") == 0.0
