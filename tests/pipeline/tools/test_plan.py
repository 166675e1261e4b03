"""gft plan: parameter counts against transformers' own models, every term against a hand
computation, and the shipped recipes planned on the GPUs they are written for."""

import json
from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from pipeline.cli import main
from pipeline.recipe.config import RECIPES_DIR, load_recipe
from pipeline.tools.plan import GIB, SHAPES, ModelShape, learner_terms, model_shape, plan, rollout_terms

# vocabulary 10, hidden 4 (2 heads of 2), 1 key-value head, MLP 6, 2 layers, tied embeddings
SMALL = ModelShape(vocab=10, hidden=4, intermediate=6, layers=2, heads=2, kv_heads=1, tied=True)
SMALL_LAYER = (4 * 4 + 4) + 2 * (4 * 2 + 2) + 4 * 4 + 3 * 4 * 6 + 2 * 4  # q, k and v, o, MLP, norms: 136
SMALL_TOTAL = 10 * 4 + 4 + 2 * SMALL_LAYER  # embeddings, final norm, layers: 316


def _hf_parameters(shape: ModelShape) -> int:
    config = Qwen2Config(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, tie_word_embeddings=shape.tied)
    with torch.device("meta"):  # shapes only, no memory
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(SHAPES))
def test_parameter_counts_are_transformers_own(name):
    assert SHAPES[name].parameters() == _hf_parameters(SHAPES[name])


def test_the_embedded_shape_is_the_tiny_models_with_the_largest_vocabulary_it_may_have(assets):
    config = json.loads((assets.base_model / "config.json").read_text())
    planned, built = model_shape(load_recipe(None), None), ModelShape.of(config)
    assert replace(planned, vocab=built.vocab) == built and planned.vocab >= built.vocab
    assert built.parameters() == _hf_parameters(built)


def test_a_small_shape_by_hand():
    assert SMALL.layer_parameters() == SMALL_LAYER == 136 and SMALL.parameters() == SMALL_TOTAL == 316
    assert SMALL.kv_dim == 2 and SMALL.activation_values() == 9 * 4 + 3 * 2 + 4 * 6


def _small_recipe(*overrides):
    return load_recipe(None, ["model.dtype=bfloat16", "learner.num_workers=2", "learner.fsdp=true",
                              "learner.num_gpus=1", "stages.warmup.micro_batch_tokens=100",
                              "stages.gft.micro_batch_tokens=50", "stages.grpo.micro_batch_tokens=50", *overrides])


def test_the_learners_terms_by_hand():
    config = _small_recipe("learner.gradient_checkpointing=true")
    terms = {t.name: t.bytes for t in learner_terms(SMALL, config)}
    assert terms["master weights (float32)"] == terms["gradients (float32)"] == 4 * 316 / 2
    assert terms["AdamW moments (float32)"] == 8 * 316 / 2
    assert terms["KL reference (compute dtype)"] == 2 * 316 / 2  # the default measures the KL every 10 steps
    assert terms["weights gathered by FSDP"] == 2 * (44 + 2 * 136)  # embeddings and norm, two layers, in bf16
    # 100 tokens (the largest micro-batch): each layer's input kept, one layer recomputed
    assert terms["activations, checkpointed (100 tokens)"] == 2 * 100 * 4 * 2 + 100 * 66 * 2
    assert terms["logits, log-softmax and its gradient"] == 100 * 10 * (2 + 12)

    plain = {t.name: t.bytes for t in learner_terms(SMALL, _small_recipe(
        "stages.warmup.kl_every=0", "stages.gft.kl_every=0", "stages.grpo.kl_every=0"))}
    assert plain["activations (100 tokens)"] == 2 * 100 * 66 * 2  # every layer's, without checkpointing
    assert "KL reference (compute dtype)" not in plain


def test_the_rollouts_terms_by_hand():
    config = _small_recipe("rollout.backend=vllm", "rollout.gpu_memory_utilization=0.5", "rollout.max_new_tokens=6",
                           "data.max_prompt_length=10")
    # half of a 1000-byte GPU is less than the 632 bytes of bf16 weights: no room for a cache
    terms, notes = rollout_terms(SMALL, config, gpu_memory=1000.0)
    assert [(t.name, t.bytes) for t in terms] == [("weights (bf16)", 2 * 316), ("KV cache", 0.0)]
    assert "not one full-length sequence fits its KV cache" in notes[-1]
    # half of 100,000 bytes, less the weights, at 16 bytes a token (keys and values, 2 layers, kv_dim 2,
    # bf16) and 10 + 6 tokens a sequence: 192.8 sequences
    terms, notes = rollout_terms(SMALL, config, gpu_memory=100_000.0)
    assert terms[1].bytes == 50_000 - 632
    assert notes == ["rollout: its KV cache holds 193 sequences of 16 tokens at once (rollout.max_num_seqs=256)"]


def test_a_shared_gpu_peaks_at_the_larger_of_sampling_and_updating():
    config = _small_recipe("rollout.backend=vllm", "rollout.num_gpus=1", "ray.colocate=true")
    result = plan(config, SMALL, gpus=2, gpu_memory_gib=1e-3)
    kept = sum(t.bytes for t in result.terms if t.kept)
    update = sum(t.bytes for t in result.terms if t.role == "learner" and not t.kept)
    sampling = sum(t.bytes for t in result.terms if t.role == "rollout")
    assert result.peaks == {"learner+rollout": kept + max(update, sampling)}
    assert result.gpus_needed == 2 and result.fits
    apart = plan(_small_recipe("rollout.backend=vllm", "rollout.num_gpus=1", "ray.colocate=false"), SMALL, gpus=2,
                 gpu_memory_gib=1e-3)
    assert apart.gpus_needed == 4 and not apart.fits  # 2 learners and the default recipe's 2 rollout workers
    assert apart.problems()[0] == "the recipe asks for 4 GPUs, 2 given"


@pytest.mark.parametrize("recipe, shape, gpus", [
    ("qwen2.5-math-1.5b/gft.yaml", "qwen2.5-math-1.5b", 4),
    ("qwen2.5-math-1.5b/gft_then_grpo.yaml", "qwen2.5-math-1.5b", 4),
    ("qwen2.5-math-7b/gft_then_grpo.yaml", "qwen2.5-math-7b", 8),
])
def test_the_qwen_recipes_fit_the_h200s_they_are_written_for(recipe, shape, gpus):
    config = load_recipe(RECIPES_DIR / recipe, check_paths=False)
    result = plan(config, SHAPES[shape], gpus=gpus, gpu_memory_gib=141)
    assert result.fits and result.gpus_needed == gpus
    (peak,) = result.peaks.values()
    assert peak < 0.7 * 141 * GIB  # a margin of 30% or more, for what the plan leaves out


def test_gft_plan_prints_the_terms_and_says_whether_it_fits(capsys):
    recipe = str(RECIPES_DIR / "qwen2.5-math-1.5b" / "gft.yaml")
    assert main(["plan", recipe, "--gpus", "4", "--gpu-memory", "141", "--shape", "qwen2.5-math-1.5b"]) == 0
    out = capsys.readouterr().out
    assert "model: 1.54 B parameters" in out and "activations, checkpointed (16,384 tokens)" in out
    assert out.strip().endswith("fits")
    assert main(["plan", recipe, "--gpus", "4", "--gpu-memory", "24", "--shape", "qwen2.5-math-1.5b"]) == 1
    out = capsys.readouterr().out
    assert "does not fit: a learner+rollout GPU needs 42.4 GiB, over its 24.0 GiB (the largest term: learner logits" \
        in out
    assert main(["plan", recipe, "--gpus", "4", "--gpu-memory", "141"]) == 2  # its model.path is a placeholder
    assert "has no config.json to read the model's shape from; name one with --shape" in capsys.readouterr().err


def test_rollouts_two_updates_ahead_are_said_to_hold_two_versions_of_the_weights_on_the_learners_node():
    qwen = SHAPES["qwen2.5-math-1.5b"]
    notes = plan(_small_recipe("rollout.max_staleness=2"), qwen, gpus=None, gpu_memory_gib=141).notes
    (held,) = [note for note in notes if note.startswith("rollout.max_staleness=2:")]
    assert f"{2 * 4 * qwen.parameters() / GIB:.1f} GiB of its memory" in held and "11.5 GiB" in held
    assert not [n for n in plan(_small_recipe("rollout.max_staleness=1"), qwen, None, 141).notes if "versions" in n]
