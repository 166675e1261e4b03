"""Overheads of a GRPO step: Arrow conversion, Ray transfer and weight sync, as % of step time.

    python bench/overheads.py [--quick] [--threads N]

A real step (``pipeline.driver.stages.train_step``: rollout, scoring, update, weight sync) runs on the
run's Ray roles on a local cluster; its median time is the denominator. On that step's own batch:
- Arrow: building it from the sampled token lists (``make_batch``), adding the reward and
  advantage columns, and packing its micro-batches into tensors (``to_packed``);
- Ray transfer: a step moves the batch four times (rollout -> driver -> teacher -> driver ->
  learners); measured as two round trips of the batch through an actor that returns it;
- weight sync: the steps' own ``timing/weight_sync_s``: the rollout workers loading the last
  update's weights at the start of their rollout call, from the learner's shared-memory block
  (``workers.weights``; the learner packs it right behind its update, as the metrics return).
The first two are timed in turns.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pyarrow as pa
import ray
from transformers import AutoTokenizer

from bench.common import (
    LocalRoles,
    arguments,
    embedded_assets,
    grpo_stage,
    interleaved_seconds,
    prompts,
    report,
    workdir,
)
from pipeline.core.batch import make_batch, to_packed, with_column
from pipeline.driver.stages import train_step
from workers.learner import _micro_batches


@ray.remote(num_cpus=0)
class Echo:
    def back(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return batch


def arrow_work(batch: pa.RecordBatch, micro_batch_tokens: int) -> None:
    columns = ("group_id", "source", "prompt_ids", "response_ids", "ground_truth", "data_source",
               "behaviour_logprobs", "policy_version", "truncated")
    built = make_batch(**{name: batch.column(name).to_pylist() for name in columns})
    built = with_column(with_column(built, "reward", batch.column("reward")), "advantage", batch.column("advantage"))
    for micro in _micro_batches(built, micro_batch_tokens):
        to_packed(micro)


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    size = args.size
    with workdir() as tmp:
        folder = Path(tmp)
        assets = embedded_assets(folder / "assets")
        stage, config = grpo_stage(size)
        tokenizer = AutoTokenizer.from_pretrained(str(assets.base_model), local_files_only=True)
        records = prompts(assets, tokenizer, size.prompts)
        with LocalRoles(config, str(assets.base_model), args.threads) as roles:
            roles.start_stage(str(assets.base_model), stage.lr, stage.weight_decay, stage.max_grad_norm)
            dump = folder / "batch.arrow"
            steps = [train_step(roles, stage, records, config, seed=i, batch_dump=dump)
                     for i in range(size.repeats + 1)][1:]
            step_s = statistics.median(step["step_time_s"] for step in steps)
            with pa.memory_map(str(dump)) as source:
                batch = pa.ipc.open_file(source).get_batch(0)
            echo = Echo.remote()
            times = interleaved_seconds({
                "arrow conversion": lambda: arrow_work(batch, stage.micro_batch_tokens),
                "ray transfer": lambda: [ray.get(echo.back.remote(batch)) for _ in range(2)],
            }, size.repeats)
    parts = {name: statistics.median(seconds) for name, seconds in times.items()}
    parts["weight sync"] = statistics.median(step["timing/weight_sync_s"] for step in steps)
    rows = [[name, seconds * 1e3, 100 * seconds / step_s] for name, seconds in parts.items()]
    rows.append(["together", sum(parts.values()) * 1e3, 100 * sum(parts.values()) / step_s])
    report("overheads", args, ["part", "ms_per_step", "percent_of_step"], rows,
           {"step_seconds": [step["step_time_s"] for step in steps], "median_step_ms": step_s * 1e3,
            "batch_rows": batch.num_rows, "batch_bytes": batch.nbytes})


if __name__ == "__main__":
    main()
