"""The TeacherWorker outside Ray: live teacher samples and the scoring of every row."""

from pipeline.core.batch import make_batch
from pipeline.embedded import DATA_SOURCE
from workers.teacher import TeacherWorker


def _batch(tokenizer, responses):
    prompt = tokenizer.encode("Compute 1+2.", add_special_tokens=False)
    return make_batch(
        group_id=["g"] * len(responses),
        source=["expert"] + ["self"] * (len(responses) - 1),
        prompt_ids=[prompt] * len(responses),
        response_ids=[tokenizer.encode(r, add_special_tokens=False) + [tokenizer.eos_token_id] for r in responses],
        ground_truth=["3"] * len(responses),
        data_source=[DATA_SOURCE] * len(responses),
    )


def test_scores_every_row_with_the_builtin_verifier(assets, tokenizer):
    worker = TeacherWorker(str(assets.base_model))
    scored, metrics = worker.score(_batch(tokenizer, ["1+2=3\n\\boxed{3}", "1+2=4\n\\boxed{4}", "junk"]))
    assert scored.column("reward").to_pylist() == [1.0, 0.0, 0.0]
    assert metrics["reward_failures"] == 0


def test_a_reward_that_is_not_a_finite_number_scores_zero_and_is_counted(assets, tokenizer, tmp_path):
    reward = tmp_path / "reward.py"
    reward.write_text(
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    return {'1': float('nan'), '2': 'high', '3': {'score': 1.0}}[solution_str[0]]\n"
    )
    worker = TeacherWorker(str(assets.base_model), reward_function=str(reward))
    scored, metrics = worker.score(_batch(tokenizer, ["1", "2", "3"]))
    assert scored.column("reward").to_pylist() == [0.0, 0.0, 1.0]
    assert metrics["reward_failures"] == 2


def test_live_teacher_samples_n_responses_per_prompt_in_policy_tokens(assets, tokenizer):
    worker = TeacherWorker(str(assets.base_model), teacher_model_path=str(assets.base_model))
    prompts = [tokenizer.encode(q, add_special_tokens=False) for q in ("Compute 1+2.", "Compute 4+4+1.")]
    samples = worker.sample(prompts, n=3, temperature=1.0, max_new_tokens=6, seed=0)
    assert [len(s) for s in samples] == [3, 3]
    for responses in samples:
        for ids in responses:
            # at most 6 teacher tokens; re-encoding text can split a broken byte into up to 3
            assert ids[-1] == tokenizer.eos_token_id and 1 <= len(ids) <= 3 * 6 + 1
