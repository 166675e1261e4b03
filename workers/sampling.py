"""What every rollout engine shares: the sampling request, the generation it returns, and the
interface an engine offers the rollout worker (``workers.hf_engine`` and ``workers.vllm_engine``
implement it). Kept free of torch and vLLM so that both environments import it cheaply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 64


@dataclass
class Generation:
    """Row ``i * n + j`` is sample j of prompt i. ``logprobs`` are log-probs of the sampled
    tokens under the distribution they were drawn from: the policy's, scaled by the temperature
    and, with top-p < 1, cut to the nucleus and renormalised (vLLM's "processed" log-probs). At
    temperature 1 and top-p 1 that is what the learner recomputes; greedy decoding reports
    temperature-1 log-probs."""

    response_ids: list[list[int]]
    logprobs: list[list[float]]
    truncated: list[bool]
    # per row, the mean over its tokens of the policy's (temperature-1) predictive entropy; None
    # from engines that do not see the full distribution
    entropy: list[float] | None = None

    @property
    def num_tokens(self) -> int:
        return sum(map(len, self.response_ids))


@dataclass(frozen=True)
class EngineOptions:
    """How a rollout worker asks for its engine; each engine reads what applies to it."""

    dtype: str = "float32"  # the compute dtype (``pipeline.core.checkpoint.torch_dtype``'s names)
    max_num_seqs: int = 256  # sequences decoded at once (prompts x n), bounds memory
    seed: int = 0
    sleep_when_idle: bool = False  # colocated with a learner: free the device between calls where possible
    gpu_memory_utilization: float = 0.5  # vLLM on a GPU
    kv_cache_gib: float | None = None  # vLLM: its KV cache; None: 1 GiB on CPU, what fits on a GPU


class RolloutEngine(Protocol):
    """A policy that samples. ``tokenizer`` is the policy's; weights arrive either as a
    checkpoint folder (a stage's start) or from the learner: through shared memory or the object
    store (``workers.weights``), or broadcast in a weight group (``workers.weight_group``)."""

    tokenizer: object

    def load_checkpoint(self, model_path: str) -> None: ...

    def load_weights(self, weights) -> None: ...

    def join_weight_group(self, address: str, port: int, rank: int, world_size: int) -> None: ...

    def leave_weight_group(self) -> None: ...

    def receive_weights(self, plan) -> None: ...

    def generate(self, prompts: list[list[int]], params: SamplingParams, seed: int) -> Generation: ...

    def describe(self) -> dict:
        """``engine`` (what runs the policy, in words) and ``sleeps`` (whether it frees its device
        memory between calls; None where that does not apply)."""
        ...
