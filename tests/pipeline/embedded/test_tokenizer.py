"""The locally trained tokenizer: digits, chat template, and the round trip through AutoTokenizer."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config

from pipeline.embedded import (
    IM_END,
    IM_START,
    PAD_TOKEN,
    Problem,
    Teacher,
    build_tokenizer,
    expert_solution,
    generate_problems,
    save_tokenizer,
)


def task_texts(task_config, tokenizer) -> list[str]:
    texts = []
    teacher = Teacher(0.5, seed=4)
    for split in ("train", "test", "ood"):
        for problem in generate_problems(task_config, split, 60):
            messages = [{"role": "user", "content": problem.question}]
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            response = teacher.solve(problem)
            texts += [problem.question, expert_solution(problem), response, prompt + response + IM_END]
    texts += [
        "a  b\n\n  c \t d  ",
        "  leading and trailing  ",
        "\n",
        " ",
        "Compute 123456789+987654321.",
        "multi\r\nline\rtext",
        "unseen bytes: héllo wörld ∑ 🙂",
        f"{IM_START}system\nYou add numbers.{IM_END}\n{IM_START}user\nCompute 1+2.{IM_END}\n",
    ]
    return texts


@pytest.fixture(scope="module")
def qwen2_folder(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tok_with_qwen2_config")
    save_tokenizer(tokenizer, folder)
    Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, num_attention_heads=4).save_pretrained(folder)
    return folder


def test_special_tokens_and_type(tokenizer):
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.convert_tokens_to_ids([PAD_TOKEN, IM_START, IM_END]) == [0, 1, 2]
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.pad_token_id == 0
    assert tokenizer.eos_token == IM_END and tokenizer.eos_token_id == 2
    assert len(tokenizer) <= 512
    # Special markers are single tokens even inside text.
    assert tokenizer.encode(f"x{IM_START}y{IM_END}")[1::2] == [1, 2]


def test_digits_are_single_tokens(tokenizer):
    for digit in "0123456789":
        assert len(tokenizer.encode(digit)) == 1
    for text in ["Compute 12+345+6789.", "12+345=357\n357+6789=7146\n\\boxed{7146}"]:
        tokens = tokenizer.convert_ids_to_tokens(tokenizer.encode(text))
        for token in tokens:
            assert not (any(c.isdigit() for c in token) and len(token) > 1), (text, tokens)
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("7146")) == ["7", "1", "4", "6"]


def test_chat_template(tokenizer):
    messages = [{"role": "user", "content": "Compute 3+5+9."}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nCompute 3+5+9.<|im_end|>\n<|im_start|>assistant\n"
    without = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert without == "<|im_start|>user\nCompute 3+5+9.<|im_end|>\n"
    two = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": "3+5=8\n8+9=17\n\\boxed{17}"}], tokenize=False
    )
    assert two == without + "<|im_start|>assistant\n3+5=8\n8+9=17\n\\boxed{17}<|im_end|>\n"
    ids = tokenizer.encode(prompt)
    assert ids.count(tokenizer.convert_tokens_to_ids(IM_START)) == 2
    assert ids.count(tokenizer.eos_token_id) == 1


def test_round_trip_through_auto_tokenizer_next_to_a_qwen2_config(tokenizer, qwen2_folder, task_config):
    assert json.loads((qwen2_folder / "config.json").read_text())["model_type"] == "qwen2"
    loaded = AutoTokenizer.from_pretrained(qwen2_folder)
    assert type(loaded) is type(tokenizer)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert (loaded.pad_token_id, loaded.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)
    for text in task_texts(task_config, tokenizer):
        ids = tokenizer.encode(text)
        assert loaded.encode(text) == ids, repr(text)
        assert loaded.decode(ids) == text, repr(text)
        assert tokenizer.decode(ids) == text, repr(text)
    messages = [{"role": "user", "content": Problem((3, 5, 9)).question}]
    assert loaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )
    # The backend pipelines are the same objects, not just agreeing on these texts.
    for part in ("normalizer", "pre_tokenizer", "decoder", "model"):
        ours = json.loads(tokenizer.backend_tokenizer.to_str())[part]
        theirs = json.loads(loaded.backend_tokenizer.to_str())[part]
        assert ours == theirs, part


def test_training_is_deterministic(task_config):
    texts = [expert_solution(p) for p in generate_problems(task_config, "train", 200)]
    a = build_tokenizer(texts + ["Compute"] * 5)
    b = build_tokenizer(texts + ["Compute"] * 5)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()


def test_vocab_size_bound_is_checked():
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer(["1+2=3"], vocab_size=100)
    small = build_tokenizer(["Compute 1+2."] * 10 + ["\\boxed{3}"] * 10, vocab_size=262)
    assert len(small) <= 262
