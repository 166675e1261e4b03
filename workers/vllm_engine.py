"""The rollout's ``vllm`` backend: ``vllm.LLM`` behind the hf backend's interface. GPU only.

vLLM is an optional extra (``pip install gft-pipeline[vllm]``, vLLM 0.24.0) imported only here.
This path is not exercised by this project's CI, which has no GPU.

Colocated with the learner on one GPU, the engine sleeps between calls (level 1: weights to CPU
memory, KV cache freed), so the learner has the GPU's memory while it trains, and wakes for the
next rollout or weight update.
"""

from __future__ import annotations

import torch

from workers.hf_generate import Generation, SamplingParams


class WeightLoaderExtension:
    """Mixed into vLLM's GPU workers (``worker_extension_cls``) so the driver can push weights
    into the running model in place, without restarting the engine."""

    def load_named_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> None:
        self.model_runner.model.load_weights(weights=named_tensors)


class VllmEngine:
    def __init__(self, model_path: str, dtype: str = "auto", gpu_memory_utilization: float = 0.5,
                 sleep_when_idle: bool = False):
        try:
            import vllm
        except ImportError as err:
            raise RuntimeError("rollout.backend=vllm needs the vllm extra: pip install 'gft-pipeline[vllm]'") from err
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=model_path,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            worker_extension_cls=f"{__name__}.WeightLoaderExtension",
            enable_sleep_mode=sleep_when_idle,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.sleep_when_idle, self.asleep = sleep_when_idle, False
        self._rest()

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def _rest(self) -> None:
        if self.sleep_when_idle:
            self.llm.sleep(level=1)
            self.asleep = True

    def generate(self, prompts: list[list[int]], params: SamplingParams, seed: int) -> Generation:
        self._wake()
        try:
            return self._generate(prompts, params, seed)
        finally:
            self._rest()

    def _generate(self, prompts: list[list[int]], params: SamplingParams, seed: int) -> Generation:
        sampling = self._vllm.SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            logprobs=0,  # the sampled token's own log-prob
            seed=seed,
        )
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sampling, use_tqdm=False)
        responses, logprobs, truncated = [], [], []
        for output in outputs:
            for sample in output.outputs:
                ids = list(sample.token_ids)
                responses.append(ids)
                logprobs.append([step[token].logprob for step, token in zip(sample.logprobs, ids)])
                truncated.append(sample.finish_reason == "length")
        return Generation(responses, logprobs, truncated)

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self._wake()
        try:
            self.llm.collective_rpc("load_named_weights", args=(list(state_dict.items()),))
        finally:
            self._rest()
