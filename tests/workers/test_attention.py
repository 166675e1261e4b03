"""The learner's packed attention: each row sees its own prompt and response and nothing else, and
rows of one group share one computed copy of their prompt, forward and backward."""

import copy

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from pipeline.core.batch import make_batch, to_packed
from pipeline.core.checkpoint import load_policy
from workers.attention import PACKED_ATTENTION
from workers.learner import packed_token_stats

# rows 0, 2 and 3 share a prompt (not all next to each other); row 3's response is empty
PROMPTS = [[5, 6, 7, 8], [9, 10], [5, 6, 7, 8], [5, 6, 7, 8], [11, 12, 13]]
RESPONSES = [[20, 21, 22], [23, 24], [25], [], [26, 27, 28, 29]]


def _batch():
    return make_batch(group_id=["a", "b", "a", "a", "c"], source=["self"] * 5, prompt_ids=PROMPTS,
                      response_ids=RESPONSES, ground_truth=["0"] * 5)


def _alone(model, prompt, response):
    """Log-probs of ``response`` after ``prompt``, one sequence through a plain (sdpa) model."""
    logits = model(input_ids=torch.tensor([prompt + response])).logits[0]
    log_probs = torch.log_softmax(logits[len(prompt) - 1 : -1], -1)
    return log_probs.gather(-1, torch.tensor(response)[:, None])[:, 0]


@pytest.fixture
def models(assets):
    packed, _ = load_policy(assets.base_model)
    packed.set_attn_implementation(PACKED_ATTENTION)
    plain, _ = load_policy(assets.base_model)
    return packed, plain


def test_shared_prompt_log_probs_equal_each_sequence_alone(models):
    packed_model, plain = models
    packed = to_packed(_batch())
    assert len(packed.input_ids) == 4 + 3 + 1 + 2 + 2 + 3 + 4  # prompt "a" once
    log_probs, _ = packed_token_stats(packed_model, packed, with_entropy=False)
    for row, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
        got = torch.as_tensor(packed.unpack(log_probs)[row])
        assert len(got) == len(response)
        if response:
            torch.testing.assert_close(got, _alone(plain, prompt, response), atol=1e-5, rtol=1e-5)


def test_shared_prompt_gradients_equal_the_sum_over_sequences_alone(models):
    packed_model, plain = models
    log_probs, _ = packed_token_stats(packed_model, to_packed(_batch()), with_entropy=False)
    log_probs.sum().backward()
    sum(_alone(plain, p, r).sum() for p, r in zip(PROMPTS, RESPONSES) if r).backward()
    for (name, shared), (_, alone) in zip(packed_model.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(shared.grad, alone.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_a_shared_prompt_predicts_each_first_response_token_through_one_output_row(models):
    """Rows 0 and 2 share prompt "a", whose last position predicts both their first tokens. It
    goes through the output layer once: a repeated row would be summed back in the backward by
    atomic adds, in an order (and so a rounding) that changes from run to run."""
    packed_model, plain = models
    packed = to_packed(_batch())
    output_rows = []
    hook = packed_model.lm_head.register_forward_hook(lambda module, args, out: output_rows.append(args[0].shape[-2]))
    _, entropy = packed_token_stats(packed_model, packed, with_entropy=True)
    hook.remove()
    assert len(packed.predictors) == sum(map(len, RESPONSES)) == 10 and output_rows == [9]
    log_probs = torch.log_softmax(plain(input_ids=torch.tensor([PROMPTS[0]])).logits[0, -1], -1)
    expected = -(log_probs.exp() * log_probs).sum()
    for row in (0, 2):
        torch.testing.assert_close(entropy[packed.response_starts[row]], expected, atol=1e-5, rtol=1e-5)


def test_sliding_window_layers_see_only_their_window_as_in_a_plain_forward():
    """A Qwen2 whose second layer attends within 3 positions, fewer than most rows hold."""
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=3,
                         max_window_layers=1)
    plain = Qwen2ForCausalLM(config).eval()
    packed_model = copy.deepcopy(plain)
    packed_model.set_attn_implementation(PACKED_ATTENTION)
    packed = to_packed(_batch())
    log_probs, _ = packed_token_stats(packed_model, packed, with_entropy=False)
    for row, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
        if response:
            got = torch.as_tensor(packed.unpack(log_probs)[row])
            torch.testing.assert_close(got, _alone(plain, prompt, response), atol=1e-5, rtol=1e-5)


def test_packed_attention_refuses_a_forward_without_its_layout(models):
    packed_model, _ = models
    with pytest.raises(ValueError, match="attention_gather"):
        packed_model(input_ids=torch.tensor([[5, 6, 7]]))
