"""Policy checkpoints: atomic writes that never leave a half-written folder."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipeline.core.checkpoint import load_policy, save_policy
from pipeline.embedded import TinyModelConfig, build_tiny_model


def test_saved_folder_loads_back_with_its_tokenizer(tmp_path, tiny_model, tokenizer):
    folder = save_policy(tiny_model, tokenizer, tmp_path / "ckpt")
    model, loaded_tokenizer = load_policy(folder)
    assert loaded_tokenizer.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pkl")) == []


def test_a_folder_with_only_pickle_weights_is_never_unpickled(tmp_path, tokenizer, monkeypatch):
    model = build_tiny_model(tokenizer, TinyModelConfig(num_hidden_layers=1))
    folder = tmp_path / "pickled"
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    unpickled = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: unpickled.append(a) or real_load(*a, **kw))
    AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)  # transformers would read it
    assert len(unpickled) == 1
    with pytest.raises(OSError, match="model.safetensors"):
        load_policy(folder)
    assert len(unpickled) == 1


def test_save_replaces_an_existing_folder(tmp_path, tiny_model, tokenizer):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    save_policy(tiny_model, tokenizer, target)
    assert not (target / "stale.txt").exists()
    assert (target / "model.safetensors").exists()
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_failed_save_leaves_the_old_folder_intact(tmp_path, tokenizer, monkeypatch):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "marker.txt").write_text("previous checkpoint")

    class Boom(RuntimeError):
        pass

    def broken_save(self, *args, **kwargs):
        raise Boom("disk full")

    model = build_tiny_model(tokenizer, TinyModelConfig(num_hidden_layers=1))
    monkeypatch.setattr(type(tokenizer), "save_pretrained", broken_save)
    with pytest.raises(Boom):
        save_policy(model, tokenizer, target)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert os.listdir(target) == ["marker.txt"]
