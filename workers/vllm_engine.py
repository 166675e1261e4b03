"""The rollout's ``vllm`` engine: a ``vllm.LLM`` behind ``workers.sampling.RolloutEngine``.

vLLM pins its own torch and transformers, which verl (the learner's) refuses, so this module runs
in a Python environment of its own (``.venv-vllm``, built by ``scripts/setup_vllm.sh``: vLLM's
CPU build on a machine without a GPU, its CUDA build on one). Ray starts the rollout actor with
that interpreter (``rollout.python``); nothing else in the project imports vLLM.

How it keeps the rollout's contract:
- **Log-probs of the distribution that sampled.** vLLM reports raw (temperature 1) log-probs
  unless asked for ``processed_logprobs``: those are after temperature and top-p, as the hf
  sampler's are. Greedy calls report temperature-1 log-probs, as the hf sampler's do.
- **Independent prompts.** vLLM seeds sample j of a request as ``seed + j``; one seed for every
  prompt would give every prompt the same draws. Each prompt gets a seed of its own, drawn from
  the call's seed and its position, so a call is reproducible and its prompts independent.
- **Weights by name, not by value.** ``collective_rpc`` arguments cross to an engine core in
  another process through an untyped msgpack decoder, which turns tensors into lists. Only a
  shared-memory block's name and layout cross (``workers.weights``), and the engine's worker
  loads from the block with vLLM's own in-place ``reload_weights``, which also repacks weights
  for backends that keep them in another layout (its CPU linear layers do).
- **Sleep only where it exists.** Colocated with a learner on a GPU, the engine sleeps between
  calls (level 1: weights to host memory, KV cache freed). Platforms without sleep mode (CPU)
  keep their memory; :meth:`VllmEngine.describe` says which, and the driver reports it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np

from pipeline.core.checkpoint import torch_dtype
from workers.sampling import EngineOptions, Generation, SamplingParams
from workers.weight_group import SyncPlan, WeightGroup, receive
from workers.weights import FlatWeights, SharedWeights, WeightsBlock

GIB = 1 << 30


class _WeightlessRotaryNotice(logging.Filter):
    """vLLM's in-place reload warns at every load that the rotary embedding was given no weights:
    it has none (its cache is derived). Other modules' warnings still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("RotaryEmbedding: Failed to load weights")


def prompt_seeds(seed: int, count: int) -> list[int]:
    """One 31-bit seed per prompt, a function of the call's ``seed`` and the prompt's position.
    vLLM seeds sample j as ``seed + j``: random 31-bit seeds keep prompts' streams apart."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(count, np.uint32) >> 1]


def checkpoint_weights(folder: str) -> dict:
    """A checkpoint folder's tensors by name. A model whose output layer is tied to its input
    embedding is saved without ``lm_head.weight``; it is named here, since vLLM's in-place reload
    leaves a module it is given no weights for broken (it warns and goes on)."""
    from safetensors.torch import load_file

    weights = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        weights.update(load_file(file))
    config = json.loads((Path(folder) / "config.json").read_text())
    if "lm_head.weight" not in weights and config.get("tie_word_embeddings"):
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    return weights


class WeightLoaderExtension:
    """Mixed into vLLM's workers (``worker_extension_cls``), wherever they run: the driver names
    a shared-memory block or a checkpoint folder, or has the worker join the learner's weight
    group and receive a sync there, and the worker reloads the model in place."""

    def load_shared_weights(self, block: str, names: list[str], shapes: list[list[int]], aliases: dict[str, str]) -> None:
        weights = SharedWeights(block, names, [tuple(shape) for shape in shapes], aliases).state_dict()
        self.reload_weights(weights_iterator=iter(weights.items()))

    def load_checkpoint_weights(self, folder: str) -> None:
        self.reload_weights(weights_iterator=iter(checkpoint_weights(folder).items()))

    def join_weight_group(self, address: str, port: int, rank: int, world_size: int) -> None:
        self.weight_group = WeightGroup(address, port, rank, world_size, self.device)

    def leave_weight_group(self) -> None:
        if getattr(self, "weight_group", None) is not None:  # vLLM makes its workers: no __init__ of ours
            self.weight_group.close()
            self.weight_group = None

    def receive_weights(self, plan: dict) -> None:
        """A sync from the weight group, fed to vLLM's reload as its buckets arrive."""
        self.reload_weights(weights_iterator=receive(self.weight_group, SyncPlan(**plan)))


class VllmEngine:
    """``model_path`` served by a vLLM engine. ``kv_cache_gib``: KV cache size (on CPU, where
    vLLM would otherwise reserve a share of the machine's memory, default 1 GiB); on a GPU,
    ``gpu_memory_utilization`` bounds weights and cache together unless it is given."""

    def __init__(self, model_path: str, options: EngineOptions):
        # the engine runs in this process: no engine-core and worker processes beside each
        # rollout actor (three processes where one does), and Ray's kill of the actor ends it
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        import vllm
        from vllm.platforms import current_platform

        self._vllm = vllm
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_WeightlessRotaryNotice())
        on_cpu = current_platform.is_cpu()
        kv_cache_gib = 1.0 if on_cpu and options.kv_cache_gib is None else options.kv_cache_gib
        self.sleeps = options.sleep_when_idle and current_platform.is_sleep_mode_available()
        self.platform = current_platform.device_name
        self.llm = vllm.LLM(
            model=model_path,
            # named exactly: vLLM's "auto" would cast a float32 policy down
            dtype=str(torch_dtype(options.dtype)).removeprefix("torch."),
            seed=options.seed,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=f"{__name__}.WeightLoaderExtension",
            enable_sleep_mode=self.sleeps,
            max_num_seqs=options.max_num_seqs,
            gpu_memory_utilization=options.gpu_memory_utilization,
            kv_cache_memory_bytes=None if kv_cache_gib is None else int(kv_cache_gib * GIB),
            # vLLM compiles the model on CPU with inductor: 20 s more at start, no faster here
            enforce_eager=on_cpu,
            # a prefill split across steps makes vLLM rewind a seeded request's generator, which
            # only CUDA generators can do: on CPU a long batch of seeded prompts fails
            enable_chunked_prefill=not on_cpu,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.block = WeightsBlock()  # where weights that came through the object store are put
        self.asleep = False
        self._rest()

    def describe(self) -> dict:
        return {"engine": f"vLLM {self._vllm.__version__} on {self.platform}", "sleeps": self.sleeps}

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def _rest(self) -> None:
        if self.sleeps:
            self.llm.sleep(level=1)
            self.asleep = True

    def generate(self, prompts: list[list[int]], params: SamplingParams, seed: int) -> Generation:
        self._wake()
        try:
            return self._generate(prompts, params, seed)
        finally:
            self._rest()

    def _generate(self, prompts: list[list[int]], params: SamplingParams, seed: int) -> Generation:
        per_prompt = [
            self._vllm.SamplingParams(
                n=params.n, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens,
                logprobs=0,  # the sampled token's own log-prob
                seed=prompt_seed,
                detokenize=False,  # the pipeline decodes what it scores itself
            )
            for prompt_seed in prompt_seeds(seed, len(prompts))
        ]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], per_prompt, use_tqdm=False)
        responses, logprobs, truncated = [], [], []
        for output in outputs:
            for sample in sorted(output.outputs, key=lambda s: s.index):
                ids = list(sample.token_ids)
                responses.append(ids)
                logprobs.append([step[token].logprob for step, token in zip(sample.logprobs, ids)])
                truncated.append(sample.finish_reason == "length")
        return Generation(responses, logprobs, truncated)

    def load_weights(self, weights: FlatWeights | SharedWeights) -> None:
        """Take the learner's weights in place. A shared block on this node is read where it is;
        weights that came through the object store are first put in a block of this actor's."""
        shared = weights if isinstance(weights, SharedWeights) else self.block.publish(weights.state_dict(),
                                                                                       weights.aliases)
        if shared is None:
            raise RuntimeError("no room in /dev/shm for the weights the vLLM engine must load")
        self._wake()
        try:
            self.llm.collective_rpc("load_shared_weights", args=(shared.block, shared.names,
                                                                 [list(s) for s in shared.shapes], shared.aliases))
            self.llm.reset_prefix_cache()  # cached prompt blocks hold the old weights' keys and values
        finally:
            self._rest()

    def join_weight_group(self, address: str, port: int, rank: int, world_size: int) -> None:
        """The engine's worker joins the learner's weight group as ``rank`` (one worker per
        engine: no tensor parallelism on this path)."""
        self.llm.collective_rpc("join_weight_group", args=(address, port, rank, world_size))

    def leave_weight_group(self) -> None:
        self.llm.collective_rpc("leave_weight_group")

    def receive_weights(self, plan: SyncPlan) -> None:
        """Take a sync from the weight group in place (the plan crosses as plain data)."""
        self._wake()
        try:
            self.llm.collective_rpc("receive_weights", args=(dataclasses.asdict(plan),))
            self.llm.reset_prefix_cache()
        finally:
            self._rest()

    def load_checkpoint(self, model_path: str) -> None:
        """Serve the weights of ``model_path`` (a checkpoint of the same model) in place: a
        stage's start, without building a new engine."""
        self._wake()
        try:
            self.llm.collective_rpc("load_checkpoint_weights", args=(model_path,))
            self.llm.reset_prefix_cache()
        finally:
            self._rest()
