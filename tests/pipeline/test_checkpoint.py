"""Policy checkpoints: atomic writes that never leave a half-written folder."""

import os

import pytest

from pipeline.checkpoint import _replace_dir, load_policy, save_policy
from pipeline.embedded import TinyModelConfig, build_tiny_model


def test_saved_folder_loads_back_with_its_tokenizer(tmp_path, tiny_model, tokenizer):
    folder = save_policy(tiny_model, tokenizer, tmp_path / "ckpt")
    model, loaded_tokenizer = load_policy(folder)
    assert loaded_tokenizer.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pkl")) == []


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


def test_replace_dir_into_a_missing_target(tmp_path):
    src = tmp_path / "new"
    src.mkdir()
    (src / "f").write_text("x")
    _replace_dir(src, tmp_path / "dst")
    assert (tmp_path / "dst" / "f").read_text() == "x" and not src.exists()
