"""The tiny Qwen2 model: build, forward, deterministic init, atomic save and load back."""

from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

from pipeline.core.checkpoint import save_policy
from pipeline.core.shapes import ModelShape
from pipeline.embedded import TinyModelConfig, build_shaped_model, build_tiny_model


def sample_ids(tokenizer) -> torch.Tensor:
    messages = [{"role": "user", "content": "Compute 3+5+9."}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return torch.tensor([tokenizer.encode(prompt + "3+5=8\n8+9=17\n\\boxed{17}")])


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory, tiny_model, tokenizer):
    return save_policy(tiny_model, tokenizer, tmp_path_factory.mktemp("models") / "base_model")


def test_builds_with_the_requested_shape(tiny_model, tokenizer):
    config = tiny_model.config
    assert isinstance(tiny_model, Qwen2ForCausalLM)
    assert config.model_type == "qwen2"
    assert config.vocab_size == len(tokenizer)
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (128, 384, 4)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.max_position_embeddings == 512
    assert config.tie_word_embeddings
    assert (
        tiny_model.get_output_embeddings().weight.data_ptr()
        == tiny_model.get_input_embeddings().weight.data_ptr()
    )
    assert config.eos_token_id == tokenizer.eos_token_id
    assert config.pad_token_id == tokenizer.pad_token_id
    assert config.bos_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert all(p.dtype == torch.float32 for p in tiny_model.parameters())
    assert sum(p.numel() for p in tiny_model.parameters()) < 2_000_000


def test_forward_and_backward(tiny_model, tokenizer):
    ids = sample_ids(tokenizer)
    out = tiny_model(input_ids=ids, labels=ids)
    assert out.logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(out.logits).all()
    # Random init: the loss is near log(vocab), i.e. the model starts close to uniform.
    assert abs(out.loss.item() - torch.log(torch.tensor(float(len(tokenizer)))).item()) < 1.0
    out.loss.backward()
    grads = [p.grad for p in tiny_model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    tiny_model.zero_grad(set_to_none=True)


def test_init_is_deterministic_and_leaves_global_rng_alone(tokenizer, tiny_model):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    again = build_tiny_model(tokenizer, TinyModelConfig())
    assert torch.equal(torch.rand(3), expected_next)
    for (name, a), (_, b) in zip(tiny_model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    other = build_tiny_model(tokenizer, TinyModelConfig(seed=1))
    assert not torch.equal(other.model.embed_tokens.weight, tiny_model.model.embed_tokens.weight)


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        TinyModelConfig(hidden_size=130, num_attention_heads=4)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        TinyModelConfig(num_attention_heads=4, num_key_value_heads=3)


def test_folder_holds_safetensors_and_no_pickle(saved_folder):
    names = set(os.listdir(saved_folder))
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    generation = json.loads((saved_folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and generation["pad_token_id"] == 0
    # Nothing left behind from the temporary sibling.
    assert os.listdir(saved_folder.parent) == [saved_folder.name]


def test_loads_back_with_identical_logits(saved_folder, tiny_model, tokenizer):
    loaded = AutoModelForCausalLM.from_pretrained(saved_folder)
    loaded_tokenizer = AutoTokenizer.from_pretrained(saved_folder)
    assert isinstance(loaded, Qwen2ForCausalLM)
    assert loaded.dtype == torch.float32
    ids = sample_ids(tokenizer)
    assert torch.equal(sample_ids(loaded_tokenizer), ids)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, tiny_model(ids).logits)
    generated = loaded.generate(
        ids, max_new_tokens=4, do_sample=False, pad_token_id=loaded_tokenizer.pad_token_id
    )
    assert generated.shape[1] > ids.shape[1]
    assert torch.equal(generated[:, : ids.shape[1]], ids)


def test_a_model_of_a_real_models_shape_has_its_parameters_and_the_embedded_tokens(tokenizer, tmp_path):
    shape = ModelShape(vocab=1024, hidden=64, intermediate=160, layers=3, heads=4, kv_heads=2, tied=False)
    model = build_shaped_model(tokenizer, shape)
    assert sum(p.numel() for p in model.parameters()) == shape.parameters()
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.vocab_size) == (64, 3, 1024)
    assert model.config.eos_token_id == tokenizer.eos_token_id < len(tokenizer) <= shape.vocab
    loaded = AutoModelForCausalLM.from_pretrained(save_policy(model, tokenizer, tmp_path / "shaped"))
    ids = torch.tensor([tokenizer("1 + 2")["input_ids"]])
    assert loaded(ids).logits.shape == (1, ids.shape[1], 1024)
    with pytest.raises(ValueError, match="more than the shape's vocabulary of 16"):
        build_shaped_model(tokenizer, ModelShape(vocab=16, hidden=8, intermediate=8, layers=1, heads=2, kv_heads=1,
                                                 tied=True))
