"""The TeacherWorker role: teacher responses (sampled live from a teacher model when the data
has none) and the scoring of every group member, expert, teacher and self alike."""

from __future__ import annotations

import logging
import time

import pyarrow as pa
import torch
from transformers import AutoTokenizer

from pipeline.core.batch import with_column
from pipeline.core.checkpoint import load_policy
from pipeline.rewards.guard import RewardGuard
from pipeline.rewards.verifiers import DEFAULT_EXTRACTION
from workers.hf_engine import generate, prepare_for_sampling
from workers.output import redirect_output
from workers.sampling import SamplingParams

logger = logging.getLogger(__name__)


class TeacherWorker:
    def __init__(
        self,
        policy_tokenizer_path: str,
        reward_function: str | None = None,
        teacher_model_path: str | None = None,
        num_threads: int | None = None,
        reward_timeout_s: float = 10.0,
        reward_workers: int = 1,
        answer_extraction: str = DEFAULT_EXTRACTION,
    ):
        redirect_output()
        if num_threads:
            torch.set_num_threads(num_threads)
        self.tokenizer = AutoTokenizer.from_pretrained(policy_tokenizer_path, local_files_only=True)
        self.rewards = RewardGuard(reward_function, reward_timeout_s, reward_workers, extraction=answer_extraction)
        self.teacher = None
        if teacher_model_path:
            self.teacher, self.teacher_tokenizer = load_policy(teacher_model_path)
            prepare_for_sampling(self.teacher).eval()

    def score(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, dict[str, float]]:
        """Fill ``reward`` for every row. A call that raises, returns no finite number or overruns
        the timeout scores 0 and is counted; it never stops the run."""
        started = time.perf_counter()
        texts = self.tokenizer.batch_decode(batch.column("response_ids").to_pylist(), skip_special_tokens=True)
        calls = zip(batch.column("data_source").to_pylist(), texts, batch.column("ground_truth").to_pylist(),
                    [None] * batch.num_rows)
        report = self.rewards.score(list(calls))
        if report.first_problem:
            logger.warning("%d reward failures, %d timeouts in %d rows; first: %s",
                           report.failures, report.timeouts, batch.num_rows, report.first_problem)
        elapsed = time.perf_counter() - started
        return with_column(batch, "reward", report.rewards), {
            "reward_failures": float(report.failures),
            "reward_timeouts": float(report.timeouts),
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
