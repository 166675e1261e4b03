"""The RolloutWorker role: samples n responses per prompt with the current policy.

Backends share one interface: ``hf`` (transformers, CPU or GPU; ``workers.hf_generate``) and
``vllm`` (``workers.vllm_engine``, imported only by a worker that runs in the vLLM environment).
Rows come back as an Arrow batch of source ``self``, stamped with the policy version whose weights
sampled them.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pyarrow as pa
import torch

from pipeline.batch import make_batch
from pipeline.checkpoint import load_policy, torch_dtype
from pipeline.data import PromptRecord
from pipeline.errors import PolicyNotFinite
from workers.hf_generate import Generation, SamplingParams, generate, prepare_for_sampling
from workers.weights import FlatWeights, SharedWeights


class RolloutWorker:
    """``colocated``: shares a GPU with a learner, so a vLLM engine sleeps between calls where
    its platform can. ``gpu_memory_utilization`` and ``kv_cache_gib``: the vLLM engine's memory
    (``workers.vllm_engine.VllmEngine``)."""

    def __init__(self, model_path: str, backend: str = "hf", dtype: str = "float32", num_threads: int | None = None,
                 max_num_seqs: int = 256, colocated: bool = False, seed: int = 0,
                 gpu_memory_utilization: float = 0.5, kv_cache_gib: float | None = None):
        if num_threads:
            torch.set_num_threads(num_threads)
            # vLLM drops torch to one thread unless OMP_NUM_THREADS asks for more
            os.environ["OMP_NUM_THREADS"] = str(num_threads)
        self.backend, self.dtype, self.max_num_seqs = backend, dtype, max_num_seqs
        self.engine_options = {"seed": seed, "sleep_when_idle": colocated, "max_num_seqs": max_num_seqs,
                               "gpu_memory_utilization": gpu_memory_utilization, "kv_cache_gib": kv_cache_gib}
        self.engine = None
        self.version = 0
        self.load(model_path, version=0)

    def load(self, model_path: str, version: int) -> None:
        """Serve the policy in ``model_path`` (a stage's start checkpoint) as ``version``. A vLLM
        engine is built once and later takes each stage's weights in place."""
        if self.backend == "vllm":
            if self.engine is None:
                from workers.vllm_engine import VllmEngine

                dtype = str(torch_dtype(self.dtype)).removeprefix("torch.")  # vLLM's auto would cast float32 down
                self.engine = VllmEngine(model_path, dtype, **self.engine_options)
                self.tokenizer = self.engine.tokenizer
            else:
                self.engine.load_checkpoint(model_path)
        else:
            self.model, self.tokenizer = load_policy(model_path, self.dtype)
            prepare_for_sampling(self.model).eval()
            if torch.cuda.is_available():
                self.model.cuda()
        self.version = version

    def describe(self) -> dict:
        """What this worker runs on, for the run's log: backend, interpreter, and for vLLM its
        version, platform and whether the engine sleeps between calls."""
        info = {"backend": self.backend, "python": sys.executable}
        if self.engine is not None:
            import vllm

            info.update(vllm=vllm.__version__, platform=self.engine.platform, sleeps=self.engine.sleeps)
        return info

    def set_weights(self, weights: FlatWeights | SharedWeights, version: int) -> int:
        """Take the learner's new weights in place; rows sampled afterwards carry ``version``."""
        if self.backend == "vllm":
            self.engine.load_weights(weights)
        else:
            self.model.load_state_dict(weights.state_dict(), strict=True)
        self.version = version
        return version

    def sample(self, prompts: list[list[int]], params: SamplingParams, seed: int) -> Generation:
        if self.backend == "vllm":
            return self.engine.generate(prompts, params, seed)
        generator = torch.Generator(device=next(self.model.parameters()).device).manual_seed(seed)
        chunk = max(1, self.max_num_seqs // params.n)
        out = Generation([], [], [], [])
        for start in range(0, len(prompts), chunk):
            part = generate(self.model, prompts[start : start + chunk], params, [self.tokenizer.eos_token_id],
                            self.tokenizer.pad_token_id, generator)
            out.response_ids += part.response_ids
            out.logprobs += part.logprobs
            out.truncated += part.truncated
            out.entropy += part.entropy
        return out

    def rollout(self, records: list[PromptRecord], params: SamplingParams, seed: int,
                weights: FlatWeights | SharedWeights | None = None, version: int = 0) -> tuple[pa.RecordBatch, dict]:
        """``params.n`` self rows per record, with behaviour log-probs and this policy version.
        ``weights``: the learner's newer weights, taken first as policy ``version`` (a weight sync
        riding on the rollout call, as verl's rollout syncs on entering generation: no call of
        its own to wait for); the seconds that took are the metric ``weight_load_s``."""
        loading = time.perf_counter()
        if weights is not None:
            self.set_weights(weights, version)
        started = time.perf_counter()
        out = self.sample([r.prompt_ids for r in records], params, seed)
        elapsed = time.perf_counter() - started
        _check_finite(out, self.version)
        repeat = [r for r in records for _ in range(params.n)]
        batch = make_batch(
            group_id=[r.uid for r in repeat],
            source=["self"] * len(repeat),
            prompt_ids=[r.prompt_ids for r in repeat],
            response_ids=out.response_ids,
            ground_truth=[r.ground_truth for r in repeat],
            data_source=[r.data_source for r in repeat],
            behaviour_logprobs=out.logprobs,
            policy_version=[self.version] * len(repeat),
            truncated=out.truncated,
        )
        metrics = {"rollout_tokens_per_s": out.num_tokens / max(elapsed, 1e-9), "rollout_tokens": out.num_tokens,
                   "weight_load_s": started - loading}
        if out.entropy is not None and out.num_tokens:
            lengths = [len(ids) for ids in out.response_ids]
            metrics["rollout_entropy"] = sum(e * n for e, n in zip(out.entropy, lengths)) / out.num_tokens
        return batch, metrics


def _check_finite(out: Generation, version: int) -> None:
    """Rows drawn from NaN probabilities are noise, not samples: refuse them."""
    finite = [bool(np.isfinite(values).all()) for values in out.logprobs]
    if not all(finite):
        raise PolicyNotFinite(f"policy version {version} sampled {finite.count(False)} of {len(finite)} responses "
                              "from next-token probabilities that are not finite (its logits overflow)")
