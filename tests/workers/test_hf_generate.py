"""The hf rollout backend's sampler against transformers' own generate and a full recompute."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from workers.hf_generate import SamplingParams, generate

PAD = 0
PROMPTS = [[5, 9, 13, 2], [7], [11, 3, 8]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=PAD, eos_token_id=1,
    )
    return Qwen2ForCausalLM(config).eval()


def _recomputed_logprobs(model, prompt, response):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    log_probs = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)
    return log_probs.gather(-1, torch.tensor(response)[:, None])[:, 0]


def test_greedy_matches_transformers_generate_for_ragged_prompts(model):
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=8)
    ours = generate(model, PROMPTS, params, eos_token_ids=[39], pad_token_id=PAD)
    for prompt, response in zip(PROMPTS, ours.response_ids):
        reference = model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False, max_new_tokens=8, eos_token_id=39, pad_token_id=PAD,
        )[0, len(prompt):].tolist()
        cut = reference.index(39) + 1 if 39 in reference else len(reference)
        assert response == reference[:cut]


def test_finished_rows_stop_and_unfinished_rows_are_marked_truncated(model):
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=6)
    free = generate(model, PROMPTS, params, eos_token_ids=[39], pad_token_id=PAD)
    eos = free.response_ids[0][2]  # make row 0's third greedy token the end token
    stopped = generate(model, PROMPTS, params, eos_token_ids=[eos], pad_token_id=PAD)
    assert stopped.response_ids[0] == free.response_ids[0][:3]
    assert stopped.truncated[0] is False
    for row, response in enumerate(stopped.response_ids):
        if eos not in response:
            assert len(response) == 6 and stopped.truncated[row] is True
            assert response == free.response_ids[row]  # dropping row 0 did not disturb the others


def test_sampled_logprobs_match_a_full_forward_and_samples_are_seeded(model):
    params = SamplingParams(n=4, temperature=1.0, top_p=1.0, max_new_tokens=7)
    first = generate(model, PROMPTS, params, [39], PAD, generator=torch.Generator().manual_seed(3))
    again = generate(model, PROMPTS, params, [39], PAD, generator=torch.Generator().manual_seed(3))
    assert first.response_ids == again.response_ids
    assert len(first.response_ids) == len(PROMPTS) * 4
    assert len({tuple(r) for r in first.response_ids}) > len(PROMPTS)  # samples differ
    for row, (response, logprobs) in enumerate(zip(first.response_ids, first.logprobs)):
        expected = _recomputed_logprobs(model, PROMPTS[row // 4], response)
        torch.testing.assert_close(torch.tensor(logprobs), expected, atol=1e-4, rtol=1e-4)


def test_top_p_keeps_only_the_nucleus(model):
    params = SamplingParams(n=16, temperature=1.0, top_p=1e-6, max_new_tokens=3)
    sampled = generate(model, [PROMPTS[0]], params, [39], PAD, generator=torch.Generator().manual_seed(0))
    greedy = generate(model, [PROMPTS[0]], SamplingParams(temperature=0.0, max_new_tokens=3), [39], PAD)
    assert all(r == greedy.response_ids[0] for r in sampled.response_ids)


def test_entropy_is_the_mean_predictive_entropy_of_a_full_forward(model):
    params = SamplingParams(n=2, temperature=0.7, max_new_tokens=6)
    out = generate(model, PROMPTS, params, [39], PAD, generator=torch.Generator().manual_seed(1))
    for row, response in enumerate(out.response_ids):
        prompt = PROMPTS[row // 2]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + response])).logits[0].float()
        log_probs = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)  # temperature 1: the policy itself
        expected = -(log_probs.exp() * log_probs).sum(-1).mean().item()
        assert out.entropy[row] == pytest.approx(expected, abs=1e-4)
