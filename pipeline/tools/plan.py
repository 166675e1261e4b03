"""The memory a recipe needs per GPU, by role and by term, before anything starts (``gft plan``).

Every term is a count of elements times their width, from the model's shape and the recipe:

- learner, kept for the whole stage: float32 master weights and AdamW's two float32 moments
  (12 bytes a parameter), each 1/N of the model under FSDP over N learners; the KL reference in
  the compute dtype, sharded alike, when a stage holds one
  (``pipeline.recipe.algorithms.needs_reference``);
- learner, during an update: float32 gradients (4 bytes a parameter, sharded alike; freed when
  the update ends); the weights FSDP gathers in the compute dtype (the embeddings and
  output layer for the whole forward and backward, two decoder layers at a time: the one
  computing and the one prefetched); the activations of one micro-batch of
  ``micro_batch_tokens`` tokens, per decoder layer and token ``9h + 3kv + 4i`` values of the
  compute dtype (norm inputs and outputs, q/k/v, attention output, the MLP's gate, up, its
  activation and product), for every layer without gradient checkpointing and, with it, each
  layer's input plus one layer recomputed; and the output layer's logits over the vocabulary with
  their float32 log-softmax and its gradient (``compute + 12`` bytes per token and vocabulary
  entry), counted for every token of the micro-batch: an upper bound, as only response tokens
  are scored;
- rollout (vLLM): its share of the GPU, ``gpu_memory_utilization``, of which its bf16 weights and
  the rest its KV cache; reported with how many full-length sequences that cache holds;
- a GPU that a learner and a rollout worker share (``ray.colocate``) holds the learner's kept
  state throughout, with the rollout's share while it samples and the update's terms while
  the rollout sleeps: its peak is the larger of the two;
- not on a GPU but said with the rest: at ``rollout.max_staleness`` k >= 2 the learner's node
  holds up to k versions of the weights in Ray's object store, 4 bytes a parameter each.

The terms measurable on CPU (master weights, gradients, moments, activations with and without
checkpointing) are compared with measurements in ``bench.checkpointing`` (docs/benchmarks.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import ConfigError
from pipeline.core.shapes import SHAPES, ModelShape
from pipeline.recipe.algorithms import needs_reference
from pipeline.recipe.config import EMBEDDED, RunConfig, gpus_shared

GIB = 2**30
EMBEDDED_VOCAB = 512  # pipeline.embedded.build_tokenizer's vocab_size, the most the embedded tokenizer has
BYTES = {"float32": 4, "bfloat16": 2}


@dataclass(frozen=True)
class Term:
    role: str
    name: str
    bytes: float
    kept: bool  # held for the whole stage (else: during an update, or while sampling)


@dataclass
class Plan:
    gpu_memory: float  # bytes per GPU
    gpus_needed: float
    gpus: float
    terms: list[Term]
    peaks: dict[str, float]  # per GPU kind ("learner", "rollout", "learner+rollout"): its peak bytes
    largest: dict[str, Term]  # per GPU kind: the largest term of its peak
    notes: list[str]

    @property
    def fits(self) -> bool:
        return self.gpus_needed <= self.gpus and all(peak <= self.gpu_memory for peak in self.peaks.values())

    def problems(self) -> list[str]:
        found = [f"the recipe asks for {self.gpus_needed:g} GPUs, {self.gpus:g} given"] \
            if self.gpus_needed > self.gpus else []
        found += [f"a {kind} GPU needs {peak / GIB:.1f} GiB, over its {self.gpu_memory / GIB:.1f} GiB (the largest "
                  f"term: {self.largest[kind].role} {self.largest[kind].name}, {self.largest[kind].bytes / GIB:.1f} GiB)"
                  for kind, peak in self.peaks.items() if peak > self.gpu_memory]
        return found


def model_shape(config: RunConfig, shape: str | None) -> ModelShape:
    """The policy's shape: ``shape`` by name, else the config.json of ``model.path``."""
    if shape is not None:
        if shape not in SHAPES:
            raise ConfigError(f"--shape: {shape!r} is not one of {', '.join(SHAPES)}")
        return SHAPES[shape]
    if config.model.path == EMBEDDED:  # its tokenizer is fitted at run time, to at most 512 tokens
        tiny = config.embedded.model
        return ModelShape(vocab=EMBEDDED_VOCAB, hidden=tiny.hidden_size, intermediate=tiny.intermediate_size,
                          layers=tiny.num_hidden_layers, heads=tiny.num_attention_heads,
                          kv_heads=tiny.num_key_value_heads, tied=tiny.tie_word_embeddings)
    found = Path(config.model.path) / "config.json"
    if not found.is_file():
        raise ConfigError(f"model.path: {config.model.path} has no config.json to read the model's shape from; "
                          f"name one with --shape ({', '.join(SHAPES)})")
    return ModelShape.of(json.loads(found.read_text(encoding="utf-8")))


def _compute_bytes(config: RunConfig, on_gpu: bool) -> int:
    dtype = config.model.dtype
    return BYTES["bfloat16" if dtype == "auto" and on_gpu else "float32" if dtype == "auto" else dtype]


def learner_terms(shape: ModelShape, config: RunConfig, on_gpu: bool = True) -> list[Term]:
    learner, stages = config.learner, [s for s in config.stages if s.algorithm != "eval"]
    shards = learner.num_workers if learner.fsdp else 1
    cb = _compute_bytes(config, on_gpu)
    p = shape.parameters()
    terms = [Term("learner", "master weights (float32)", 4 * p / shards, True),
             Term("learner", "gradients (float32)", 4 * p / shards, False),
             Term("learner", "AdamW moments (float32)", 8 * p / shards, True)]
    if any(needs_reference(s) for s in stages):
        terms.append(Term("learner", "KL reference (compute dtype)", cb * p / shards, True))
    if learner.fsdp:
        gathered = shape.outer_parameters() + 2 * shape.layer_parameters()
        terms.append(Term("learner", "weights gathered by FSDP", cb * gathered, False))
    elif cb < 4:  # autocast keeps a compute-dtype copy of every weight it casts, until the forward ends
        terms.append(Term("learner", "weights cast by autocast", cb * p, False))
    tokens = max((s.micro_batch_tokens for s in stages), default=0)
    per_layer = tokens * shape.activation_values() * cb
    if learner.gradient_checkpointing:
        activations = shape.layers * tokens * shape.hidden * cb + per_layer
        terms.append(Term("learner", f"activations, checkpointed ({tokens:,} tokens)", activations, False))
    else:
        terms.append(Term("learner", f"activations ({tokens:,} tokens)", shape.layers * per_layer, False))
    terms.append(Term("learner", "logits, log-softmax and its gradient", tokens * shape.vocab * (cb + 12), False))
    return terms


def rollout_terms(shape: ModelShape, config: RunConfig, gpu_memory: float) -> tuple[list[Term], list[str]]:
    """The rollout's share of its GPU: vLLM's weights and KV cache (an hf sampler on a GPU: its
    weights and a KV cache for ``max_num_seqs`` full-length sequences)."""
    rollout = config.rollout
    cb = BYTES["bfloat16"] if config.model.dtype in ("auto", "bfloat16") else 4
    weights = cb * shape.parameters()
    per_token = 2 * shape.layers * shape.kv_dim * cb  # keys and values
    longest = config.data.max_prompt_length + rollout.max_new_tokens
    if rollout.backend == "vllm":
        share = rollout.gpu_memory_utilization * gpu_memory
        cache = rollout.kv_cache_gib * GIB if rollout.kv_cache_gib else share - weights
    else:
        cache = rollout.max_num_seqs * longest * per_token
    terms = [Term("rollout", "weights (bf16)" if cb == 2 else "weights", weights, False),
             Term("rollout", "KV cache", max(cache, 0.0), False)]
    sequences = cache / (per_token * longest)
    notes = [(f"rollout: its KV cache holds {sequences:.0f} sequences of {longest:,} tokens at once "
              f"(rollout.max_num_seqs={rollout.max_num_seqs})")]
    if sequences < 1:
        notes.append("rollout: not one full-length sequence fits its KV cache: raise "
                     "rollout.gpu_memory_utilization or lower rollout.max_new_tokens")
    return terms, notes


def plan(config: RunConfig, shape: ModelShape, gpus: int | None, gpu_memory_gib: float) -> Plan:
    """``gpus``: how many the job may use; None: as many as the recipe asks."""
    gpu_memory = gpu_memory_gib * GIB
    learner, rollout = learner_terms(shape, config), []
    notes = []
    colocated = gpus_shared(config)
    if config.rollout.num_gpus > 0:
        rollout, notes = rollout_terms(shape, config, gpu_memory)
    kept = [t for t in learner if t.kept]
    update = [t for t in learner if not t.kept]
    phases = {}  # GPU kind -> the terms of its peak
    if config.learner.num_gpus > 0:
        sampling_wins = colocated and sum(t.bytes for t in rollout) > sum(t.bytes for t in update)
        phases["learner+rollout" if colocated else "learner"] = kept + (rollout if sampling_wins else update)
    if rollout and not colocated:
        phases["rollout"] = rollout
    peaks = {kind: sum(t.bytes for t in terms) for kind, terms in phases.items()}
    largest = {kind: max(terms, key=lambda t: t.bytes) for kind, terms in phases.items()}
    staleness = config.rollout.max_staleness
    if staleness >= 2:
        notes.append(f"rollout.max_staleness={staleness}: the learner's node holds up to {staleness} versions of the "
                     f"weights in Ray's object store for the rollouts under way, "
                     f"{staleness * 4 * shape.parameters() / GIB:.1f} GiB of its memory (float32)")
    needed = config.learner.num_workers * config.learner.num_gpus + config.teacher.num_gpus
    if not colocated:
        needed += config.rollout.num_workers * config.rollout.num_gpus
    return Plan(gpu_memory, needed, needed if gpus is None else gpus, learner + rollout, peaks, largest, notes)


def format_plan(result: Plan, shape: ModelShape) -> str:
    lines = [(f"model: {shape.parameters() / 1e9:.2f} B parameters ({shape.layers} layers, hidden {shape.hidden}, "
              f"vocabulary {shape.vocab:,})"),
             f"GPUs: {result.gpus_needed:g} asked of {result.gpus:g}, {result.gpu_memory / GIB:.0f} GiB each", "",
             f"{'role':<8} {'term':<44} {'GiB':>8}  when"]
    for term in result.terms:
        when = "whole stage" if term.kept else "update" if term.role == "learner" else "sampling"
        lines.append(f"{term.role:<8} {term.name:<44} {term.bytes / GIB:>8.2f}  {when}")
    lines.append("")
    for kind, peak in result.peaks.items():
        margin = result.gpu_memory - peak
        lines.append(f"peak on a {kind} GPU: {peak / GIB:.1f} GiB of {result.gpu_memory / GIB:.0f}: "
                     + (f"fits, {margin / GIB:.1f} GiB ({margin / result.gpu_memory:.0%}) to spare" if margin >= 0
                        else f"does not fit, {-margin / GIB:.1f} GiB short"))
    lines += result.notes
    lines.append("fits" if result.fits else "does not fit: " + "; ".join(result.problems()))
    return "\n".join(lines)
