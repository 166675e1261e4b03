"""The RolloutWorker role: samples n responses per prompt with the current policy.

Its engine is ``hf`` (transformers, CPU or GPU; ``workers.hf_engine``) or ``vllm``
(``workers.vllm_engine``, imported only by a worker that runs in the vLLM environment), both behind
``workers.sampling.RolloutEngine``.
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

from pipeline.core.batch import make_batch
from pipeline.core.data import PromptRecord
from pipeline.core.errors import PolicyNotFinite
from workers.hf_engine import HfEngine
from workers.output import redirect_output
from workers.sampling import EngineOptions, Generation, RolloutEngine, SamplingParams
from workers.weight_group import NotInWeightGroup, SyncPlan
from workers.weights import FlatWeights, SharedWeights


def start_engine(backend: str, model_path: str, options: EngineOptions) -> RolloutEngine:
    """The engine of ``backend`` serving ``model_path``: the one place a backend is chosen. vLLM's
    module is imported only here, by a worker running in the vLLM environment."""
    if backend == "vllm":
        from workers.vllm_engine import VllmEngine

        return VllmEngine(model_path, options)
    return HfEngine(model_path, options)


class PolicyMissing(RuntimeError):
    """A rollout worker asked to sample a policy it does not hold: Ray restarted its process (from
    the base model) between two calls. The driver gives it the policy and asks again."""


class RolloutWorker:
    """A rollout engine (``backend``, with ``options``) serving the policy of a known version."""

    def __init__(self, model_path: str, backend: str = "hf", options: EngineOptions | None = None,
                 num_threads: int | None = None):
        redirect_output()
        if num_threads:
            torch.set_num_threads(num_threads)
            # vLLM drops torch to one thread unless OMP_NUM_THREADS asks for more
            os.environ["OMP_NUM_THREADS"] = str(num_threads)
        self.backend = backend
        self.engine = start_engine(backend, model_path, options or EngineOptions())
        self.version = 0
        self.in_weight_group = False

    def load(self, model_path: str, version: int) -> None:
        """Serve the policy in ``model_path`` (a stage's start checkpoint) as ``version``."""
        self.engine.load_checkpoint(model_path)
        self.version = version

    def describe(self) -> dict:
        """What this worker runs, for the run's log: its engine (``RolloutEngine.describe``) and
        interpreter."""
        return {"backend": self.backend, "python": sys.executable, **self.engine.describe()}

    def set_weights(self, weights: FlatWeights | SharedWeights, version: int) -> int:
        """Take the learner's new weights in place; rows sampled afterwards carry ``version``."""
        self.engine.load_weights(weights)
        self.version = version
        return version

    def join_weight_group(self, address: str, port: int, rank: int, world_size: int) -> None:
        """Become ``rank`` of the learner's weight group (``workers.weight_group``)."""
        self.engine.join_weight_group(address, port, rank, world_size)
        self.in_weight_group = True

    def leave_weight_group(self) -> None:
        self.engine.leave_weight_group()
        self.in_weight_group = False

    def receive_weights(self, plan: SyncPlan, version: int) -> int:
        """Take the learner's new weights from the weight group as it broadcasts them; rows
        sampled afterwards carry ``version``."""
        if not self.in_weight_group:
            raise NotInWeightGroup("this rollout worker joined no weight group since it started")
        try:
            self.engine.receive_weights(plan)
        except BaseException:
            self.leave_weight_group()  # a broken group: the driver makes a new one
            raise
        self.version = version
        return version

    def sample(self, prompts: list[list[int]], params: SamplingParams, seed: int) -> Generation:
        return self.engine.generate(prompts, params, seed)

    def rollout(self, records: list[PromptRecord], params: SamplingParams, seed: int,
                weights: FlatWeights | SharedWeights | None = None, version: int = 0) -> tuple[pa.RecordBatch, dict]:
        """``params.n`` self rows per record, with behaviour log-probs and this policy version.
        ``weights``: the learner's newer weights, taken first as policy ``version`` (a weight sync
        riding on the rollout call, as verl's rollout syncs on entering generation: no call of
        its own to wait for); the seconds that took are the metric ``weight_load_s``, the bytes it
        read ``weight_load_bytes``."""
        loading = time.perf_counter()
        if weights is not None:
            self.set_weights(weights, version)
        elif version != self.version:
            raise PolicyMissing(f"asked to sample policy version {version}, this worker serves {self.version}: Ray "
                                "restarted it since it was given its weights")
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
                   "weight_load_s": started - loading, "weight_load_bytes": weights.nbytes if weights else 0}
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
