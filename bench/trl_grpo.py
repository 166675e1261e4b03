"""Baseline: TRL's GRPOTrainer steps/s on CPU on the embedded tiny model and chain-addition task.

Run with the TRL venv's python (see bench/trl_env.py), never the project's .venv:

    bench/.venv-trl/bin/python bench/trl_grpo.py SPEC.json OUT.json

SPEC.json: model_path, prompts (chat-message lists), ground_truths, group_size, prompts_per_step,
max_completion_length, steps, lr, temperature, seed, num_threads.

On the 2-vCPU dev VM, num_threads=1 gives steady step times; with 2 threads the same step swings
between ~1 s and ~30 s (a plain 2-thread matmul loop shows the same 10x jitter there).

The TRL venv has no ray/verl, so nothing from `pipeline`/`workers` is imported as a package; only
the task verifier (pipeline/embedded/task.py, stdlib-only) is loaded by file path.
"""

from __future__ import annotations

import os

# Before any Hugging Face import: they read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
import transformers
import trl
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

TASK_PY = Path(__file__).resolve().parent.parent / "pipeline" / "embedded" / "task.py"


def load_verify():
    """`verify(response, ground_truth) -> float` from task.py, without importing the `pipeline` package."""
    spec = importlib.util.spec_from_file_location("gft_embedded_task", TASK_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses looks the module up by name while the file runs
    spec.loader.exec_module(module)
    return module.verify


class Recorder(TrainerCallback):
    """Wall time of every optimizer step: on_step_begin fires before generation, on_step_end after
    optimizer.step(), so each interval is generate + reward + forward/backward + update."""

    def __init__(self):
        self.step_seconds: list[float] = []
        self.optimizer_steps = 0
        self._start = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.optimizer_steps += 1

    def on_step_end(self, args, state, control, **kwargs):
        self.step_seconds.append(time.perf_counter() - self._start)


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    group, per_step = spec["group_size"], spec["prompts_per_step"]
    torch.set_num_threads(spec["num_threads"])
    verify = load_verify()

    # What the reward function saw, per call (= per generation batch = per step here).
    calls: list[dict] = []

    def reward(prompts, completions, completion_ids, ground_truth, **_):
        # Conversational prompts give completions as [{"role": "assistant", "content": text}].
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        scores = [verify(text, truth) for text, truth in zip(texts, ground_truth)]
        per_prompt = Counter(json.dumps(p) for p in prompts)
        calls.append(
            {
                "completions": len(texts),
                "distinct_prompts": len(per_prompt),
                "completions_per_prompt": sorted(set(per_prompt.values())),
                "completion_tokens": sum(len(ids) for ids in completion_ids),
                "mean_reward": sum(scores) / len(scores),
            }
        )
        return scores

    model_path = spec["model_path"]
    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_path, local_files_only=True, dtype=torch.float32)
    dataset = Dataset.from_dict({"prompt": spec["prompts"], "ground_truth": spec["ground_truths"]})

    batch = per_step * group  # completions per optimizer step
    with tempfile.TemporaryDirectory() as scratch:
        args = GRPOConfig(
            output_dir=scratch,  # required, but nothing is saved into it
            use_cpu=True,
            bf16=False,  # TRL's config turns bf16 on by default; the project trains in fp32
            fp16=False,
            gradient_checkpointing=False,  # TRL's default is True; the project does not recompute activations
            seed=spec["seed"],
            max_steps=spec["steps"],
            learning_rate=spec["lr"],
            lr_scheduler_type="constant",  # project GRPO stage: constant lr, no warm-up
            warmup_steps=0,
            optim="adamw_torch",  # plain torch AdamW like the project's learner (HF's default is the fused one)
            weight_decay=0.0,
            max_grad_norm=1.0,
            # One generation batch -> one optimizer step: per-device batch counts completions.
            per_device_train_batch_size=batch,
            generation_batch_size=batch,
            gradient_accumulation_steps=1,
            num_iterations=1,
            num_generations=group,
            max_completion_length=spec["max_completion_length"],
            temperature=spec["temperature"],
            top_p=1.0,
            top_k=0,  # 0 = no top-k filter, as the project's sampler
            use_vllm=False,
            beta=0.0,  # no KL, so TRL loads no reference model
            epsilon=0.2,  # project's clip_ratio
            scale_rewards="group",  # advantage = (r - group mean) / group std, as the project
            loss_type="dapo",  # token mean over the whole batch (one process, no accumulation)
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            logging_steps=1,
            disable_tqdm=True,
            log_completions=False,
            dataloader_num_workers=0,
        )
        recorder = Recorder()
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[recorder],
        )
        assert args.steps_per_generation == 1, args.steps_per_generation
        torch.set_num_threads(spec["num_threads"])  # in case anything above changed it
        trainer.train()

    times = recorder.step_seconds
    timed = times[1:]  # the first step is warm-up (allocator, kernel selection, first generate)
    out = {
        "trl_version": trl.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "step_seconds": times,
        "steps_per_s": len(timed) / sum(timed) if timed else None,
        "median_step_seconds": statistics.median(timed) if timed else None,  # robust to one noisy step
        "completion_tokens_per_step": sum(c["completion_tokens"] for c in calls) / len(calls),
        "mean_reward": sum(c["mean_reward"] for c in calls) / len(calls),
        # Evidence that each step is one generation batch of full groups and one optimizer update.
        "checks": {
            "optimizer_steps": recorder.optimizer_steps,
            "global_step": trainer.state.global_step,
            "reward_calls": calls,
        },
    }
    Path(out_path).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("steps_per_s", "step_seconds", "mean_reward")}))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python bench/trl_grpo.py SPEC.json OUT.json")
    main(sys.argv[1], sys.argv[2])
