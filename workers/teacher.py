"""The TeacherWorker role: teacher responses (sampled live from a teacher model when the data
has none) and the scoring of every group member, expert, teacher and self alike."""

from __future__ import annotations

import math
import time

import pyarrow as pa
import torch
from transformers import AutoTokenizer

from pipeline.batch import with_column
from pipeline.checkpoint import load_policy
from pipeline.rewards import load_reward_function
from workers.hf_generate import SamplingParams, generate


class TeacherWorker:
    def __init__(
        self,
        policy_tokenizer_path: str,
        reward_function: str | None = None,
        teacher_model_path: str | None = None,
        num_threads: int | None = None,
    ):
        if num_threads:
            torch.set_num_threads(num_threads)
        self.tokenizer = AutoTokenizer.from_pretrained(policy_tokenizer_path, local_files_only=True)
        self.compute_score = load_reward_function(reward_function)
        self.teacher = None
        if teacher_model_path:
            self.teacher, self.teacher_tokenizer = load_policy(teacher_model_path)
            self.teacher.eval()

    def score(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, dict[str, float]]:
        """Fill ``reward`` for every row. A reward that is not a finite number scores 0 and is counted."""
        started = time.perf_counter()
        texts = self.tokenizer.batch_decode(batch.column("response_ids").to_pylist(), skip_special_tokens=True)
        sources = batch.column("data_source").to_pylist()
        truths = batch.column("ground_truth").to_pylist()
        rewards, failures = [], 0
        for text, source, truth in zip(texts, sources, truths):
            value = self.compute_score(source, text, truth, None)
            if isinstance(value, dict):  # verl allows {"score": ..., ...}
                value = value.get("score")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                value, failures = 0.0, failures + 1
            rewards.append(float(value))
        elapsed = time.perf_counter() - started
        return with_column(batch, "reward", rewards), {
            "reward_failures": float(failures),
            "scoring_rows_per_s": batch.num_rows / max(elapsed, 1e-9),
        }

    def sample(self, prompts: list[list[int]], n: int, temperature: float, max_new_tokens: int, seed: int):
        """``n`` live teacher responses per prompt, as policy-tokenizer ids ending in EOS.

        Text is the common currency: the teacher may use a different tokenizer than the policy."""
        if self.teacher is None:
            raise RuntimeError("teacher responses were asked for but teacher.model_path is not set")
        texts = self.tokenizer.batch_decode(prompts, skip_special_tokens=False)
        teacher_prompts = [self.teacher_tokenizer.encode(t, add_special_tokens=False) for t in texts]
        out = generate(
            self.teacher,
            teacher_prompts,
            SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens),
            [self.teacher_tokenizer.eos_token_id],
            self.teacher_tokenizer.pad_token_id if self.teacher_tokenizer.pad_token_id is not None
            else self.teacher_tokenizer.eos_token_id,
            torch.Generator().manual_seed(seed),
        )
        responses = []
        for text in self.teacher_tokenizer.batch_decode(out.response_ids, skip_special_tokens=True):
            responses.append(self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id])
        return [responses[i * n : (i + 1) * n] for i in range(len(prompts))]
