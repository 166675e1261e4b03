"""The hf rollout backend's sampler against transformers' own generate and a full recompute.

``model`` is a plain transformers model (sdpa); ``sampler`` the same weights prepared for the
sampler's own attention and key-value slots."""

import copy

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from workers import llama_decode
from workers.hf_engine import _inverse_cdf_sample, generate, prepare_for_sampling
from workers.sampling import SamplingParams

PAD = 0
PROMPTS = [[5, 9, 13, 2], [7], [11, 3, 8]]


# Qwen2 and Llama decode through workers.llama_decode; Qwen3 (query/key norms) and a Qwen2 whose
# second layer attends within a window of 3 positions (shorter than the prompts) through their forward
ARCHITECTURES = {"qwen2": (Qwen2Config, Qwen2ForCausalLM, {}), "llama": (LlamaConfig, LlamaForCausalLM, {}),
                 "qwen3": (Qwen3Config, Qwen3ForCausalLM, {}),
                 "qwen2-sliding": (Qwen2Config, Qwen2ForCausalLM,
                                   {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 1})}


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def model(request):
    torch.manual_seed(0)
    config_class, model_class, extra = ARCHITECTURES[request.param]
    config = config_class(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=PAD, eos_token_id=1, **extra,
    )
    return model_class(config).eval()


@pytest.fixture(scope="module")
def sampler(model):
    return prepare_for_sampling(copy.deepcopy(model))


def _recomputed_logprobs(model, prompt, response, temperature=1.0, top_p=1.0):
    """Log-probs of ``response`` under the distribution that samples it: the policy scaled by
    ``temperature``, cut to the top-p nucleus and renormalised."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    probs = torch.softmax(logits[len(prompt) - 1 : -1] / temperature, -1)
    ranked, order = probs.sort(-1, descending=True)
    outside = ranked.cumsum(-1) - ranked >= top_p
    probs = torch.zeros_like(probs).scatter(-1, order, ranked.masked_fill(outside, 0.0))
    return (probs / probs.sum(-1, keepdim=True)).log().gather(-1, torch.tensor(response)[:, None])[:, 0]


def test_greedy_matches_transformers_generate_for_ragged_prompts(model, sampler):
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=8)
    ours = generate(sampler, PROMPTS, params, eos_token_ids=[39], pad_token_id=PAD)
    for prompt, response in zip(PROMPTS, ours.response_ids):
        reference = model.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False, max_new_tokens=8, eos_token_id=39, pad_token_id=PAD,
        )[0, len(prompt):].tolist()
        cut = reference.index(39) + 1 if 39 in reference else len(reference)
        assert response == reference[:cut]


def test_finished_rows_stop_and_unfinished_rows_are_marked_truncated(sampler):
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=6)
    free = generate(sampler, PROMPTS, params, eos_token_ids=[39], pad_token_id=PAD)
    first = free.response_ids[0]
    cut = next(i for i in range(1, len(first)) if first[i] not in first[:i])
    eos = first[cut]  # row 0's first greedy token after the first that it has not emitted before
    stopped = generate(sampler, PROMPTS, params, eos_token_ids=[eos], pad_token_id=PAD)
    assert stopped.response_ids[0] == first[: cut + 1]
    assert stopped.truncated[0] is False
    for row, response in enumerate(stopped.response_ids):
        if eos not in response:
            assert len(response) == 6 and stopped.truncated[row] is True
            assert response == free.response_ids[row]  # dropping row 0 did not disturb the others


def test_sampled_logprobs_match_a_full_forward_and_samples_are_seeded(model, sampler):
    params = SamplingParams(n=4, temperature=1.0, top_p=1.0, max_new_tokens=7)
    first = generate(sampler, PROMPTS, params, [39], PAD, generator=torch.Generator().manual_seed(3))
    again = generate(sampler, PROMPTS, params, [39], PAD, generator=torch.Generator().manual_seed(3))
    assert first.response_ids == again.response_ids
    assert len(first.response_ids) == len(PROMPTS) * 4
    assert len({tuple(r) for r in first.response_ids}) > len(PROMPTS)  # samples differ
    for row, (response, logprobs) in enumerate(zip(first.response_ids, first.logprobs)):
        expected = _recomputed_logprobs(model, PROMPTS[row // 4], response)
        torch.testing.assert_close(torch.tensor(logprobs), expected, atol=1e-4, rtol=1e-4)


def test_top_p_keeps_only_the_nucleus(sampler):
    params = SamplingParams(n=16, temperature=1.0, top_p=1e-6, max_new_tokens=3)
    sampled = generate(sampler, [PROMPTS[0]], params, [39], PAD, generator=torch.Generator().manual_seed(0))
    greedy = generate(sampler, [PROMPTS[0]], SamplingParams(temperature=0.0, max_new_tokens=3), [39], PAD)
    assert all(r == greedy.response_ids[0] for r in sampled.response_ids)


def test_logprobs_are_of_the_temperature_scaled_nucleus_that_sampled(model, sampler):
    params = SamplingParams(n=4, temperature=0.7, top_p=0.8, max_new_tokens=7)
    out = generate(sampler, PROMPTS, params, [39], PAD, generator=torch.Generator().manual_seed(2))
    for row, (response, logprobs) in enumerate(zip(out.response_ids, out.logprobs)):
        expected = _recomputed_logprobs(model, PROMPTS[row // 4], response, temperature=0.7, top_p=0.8)
        assert torch.isfinite(expected).all()  # every sampled token lies in its nucleus
        torch.testing.assert_close(torch.tensor(logprobs), expected, atol=1e-4, rtol=1e-4)


def test_entropy_is_the_mean_predictive_entropy_of_a_full_forward(model, sampler):
    params = SamplingParams(n=2, temperature=0.7, max_new_tokens=6)
    out = generate(sampler, PROMPTS, params, [39], PAD, generator=torch.Generator().manual_seed(1))
    for row, response in enumerate(out.response_ids):
        prompt = PROMPTS[row // 2]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + response])).logits[0].float()
        log_probs = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)  # temperature 1: the policy itself
        expected = -(log_probs.exp() * log_probs).sum(-1).mean().item()
        assert out.entropy[row] == pytest.approx(expected, abs=1e-4)


def test_rows_dropped_mid_decode_leave_the_others_exact(model, sampler):
    # four end tokens out of 40: rows end all along the way, so the batch is compacted repeatedly
    params = SamplingParams(n=8, temperature=1.0, max_new_tokens=12)
    out = generate(sampler, PROMPTS, params, [36, 37, 38, 39], PAD, generator=torch.Generator().manual_seed(5))
    lengths = [len(r) for r in out.response_ids]
    assert min(lengths) < 6 and max(lengths) == 12
    assert sum(1 for r in out.response_ids if r[-1] in (36, 37, 38, 39)) > len(lengths) // 8
    for row, (response, logprobs) in enumerate(zip(out.response_ids, out.logprobs)):
        assert out.truncated[row] == (response[-1] not in (36, 37, 38, 39))
        expected = _recomputed_logprobs(model, PROMPTS[row // 8], response)
        torch.testing.assert_close(torch.tensor(logprobs), expected, atol=1e-4, rtol=1e-4)


def test_inverse_cdf_sampling_follows_the_weights_and_never_draws_a_zero():
    weights = torch.tensor([[0.0, 2.0, 0.0, 1.0, 5.0, 0.0, 2.0]])  # unnormalised, zeros inside and at the end
    draws = _inverse_cdf_sample(weights.expand(40_000, -1), torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=7).double()
    assert counts[weights[0] == 0].sum() == 0
    expected = weights[0].double() / weights.sum() * len(draws)
    spread = (expected * (1 - expected / len(draws))).sqrt()
    assert ((counts - expected).abs() <= 5 * spread + 1e-9).all()  # within 5 standard deviations


def test_nan_probabilities_draw_tokens_in_range_with_nan_log_probs(sampler):
    """Weights finite but so large that the logits overflow: the sampler must not index past the
    vocabulary, and its NaN log-probs are what the rollout worker refuses."""
    blown_up = copy.deepcopy(sampler)
    with torch.no_grad():
        blown_up.get_output_embeddings().weight.fill_(3e38)  # float32's largest is 3.4e38
    out = generate(blown_up, PROMPTS, SamplingParams(n=2, temperature=1.0, max_new_tokens=3), [39], PAD,
                   torch.Generator().manual_seed(0))
    assert all(0 <= token < 40 for ids in out.response_ids for token in ids)
    assert all(torch.tensor(values).isnan().all() for values in out.logprobs)


def test_generate_refuses_a_model_not_prepared_for_sampling(model):
    with pytest.raises(ValueError, match="prepare_for_sampling"):
        generate(model, PROMPTS, SamplingParams(max_new_tokens=2), [39], PAD)


def test_llama_family_models_with_full_attention_take_the_short_decoding_step(model):
    full_attention = set(getattr(model.config, "layer_types", None) or ["full_attention"]) == {"full_attention"}
    assert llama_decode.supports(model) == (model.config.model_type in ("qwen2", "llama") and full_attention)
