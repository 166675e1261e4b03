"""What the benchmarks share: the embedded default's model and prompts, real batches made from
them, a timer, and the report (a printed table and a JSON file).

Sizes are the embedded recipe's (``recipes/default.yaml``): 16 prompts a step, groups of 8,
responses of up to 48 tokens. ``--quick`` shrinks everything so a smoke test can run a script.
Ray and verl are imported where they are used: ``bench.gpu_check`` runs on a GPU machine that
has neither.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from transformers import AutoTokenizer

from pipeline.core.batch import concat_batches, make_batch, with_column
from pipeline.core.checkpoint import load_policy, save_policy
from pipeline.core.data import PromptRecord, load_prompts
from pipeline.core.shapes import SHAPES
from pipeline.embedded import EmbeddedAssets, build_embedded_assets, build_shaped_model, verify
from pipeline.recipe.config import GroupConfig, RunConfig, StageConfig, load_recipe
from workers.hf_engine import _left_pad
from workers.rollout import RolloutWorker
from workers.sampling import SamplingParams

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Size:
    prompts: int = 16
    group: int = 8
    max_new_tokens: int = 48
    repeats: int = 5  # timed runs; the median is reported, after one untimed warm-up run


QUICK = Size(prompts=2, group=2, max_new_tokens=8, repeats=1)


def arguments(description: str, **extra: int) -> argparse.Namespace:
    """The common options, and ``--NAME`` for each extra integer option with its default."""
    parser = argparse.ArgumentParser(description=description)
    for name, default in extra.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that the script runs")
    parser.add_argument("--out", type=Path, help="the JSON file to write (default: bench/results/NAME.json)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.size = QUICK if args.quick else Size()
    return args


def default_recipe() -> RunConfig:
    return load_recipe(ROOT / "recipes" / "default.yaml")


def embedded_assets(folder: Path) -> EmbeddedAssets:
    """The embedded default's task and base model, built from its seeds as ``gft run`` does."""
    e = default_recipe().embedded
    return build_embedded_assets(folder, e.task, e.model, n_train=e.n_train, n_test=e.n_test, n_ood=e.n_ood,
                                 n_teacher=e.n_teacher)


def workdir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="gft-bench-")


def prompts(assets: EmbeddedAssets, tokenizer, n: int) -> list[PromptRecord]:
    return load_prompts(assets.train, tokenizer, default_recipe().data.max_prompt_length)[:n]


def scored(batch: pa.RecordBatch, tokenizer) -> pa.RecordBatch:
    """Rewards from the embedded verifier and group-normalised advantages, as a step makes them."""
    from pipeline.core.advantages import group_advantages

    responses = tokenizer.batch_decode(batch.column("response_ids").to_pylist(), skip_special_tokens=True)
    rewards = np.asarray([verify(text, truth) for text, truth in zip(responses, batch.column("ground_truth").to_pylist())],
                         dtype=np.float32)
    batch = with_column(batch, "reward", rewards)
    return with_column(batch, "advantage", group_advantages(rewards, batch.column("group_id").to_pylist()))


def grpo_batch(worker: RolloutWorker, records: list[PromptRecord], size: Size, seed: int = 0) -> pa.RecordBatch:
    """A GRPO step's batch: ``size.group`` samples per prompt from the policy, scored."""
    params = SamplingParams(n=size.group, temperature=1.0, max_new_tokens=size.max_new_tokens)
    return scored(worker.rollout(records, params, seed)[0], worker.engine.tokenizer)


def gft_rows(worker: RolloutWorker, records: list[PromptRecord], size: Size, seed: int = 0) -> pa.RecordBatch:
    """A GFT step's rows grouped as the default recipe does: per prompt 1 expert, 3 teacher and
    ``size.group // 2`` self rows, not yet scored."""
    off_policy = [(r, source, ids) for r in records
                  for source, ids in [("expert", r.expert[0])] + [("teacher", t) for t in r.teacher[:3]]]
    rows = make_batch(group_id=[r.uid for r, _, _ in off_policy], source=[s for _, s, _ in off_policy],
                      prompt_ids=[r.prompt_ids for r, _, _ in off_policy],
                      response_ids=[ids for _, _, ids in off_policy],
                      ground_truth=[r.ground_truth for r, _, _ in off_policy])
    params = SamplingParams(n=max(1, size.group // 2), temperature=1.0, max_new_tokens=size.max_new_tokens)
    self_rows, _ = worker.rollout(records, params, seed)
    return concat_batches([rows, self_rows])


def gft_batch(worker: RolloutWorker, records: list[PromptRecord], size: Size, seed: int = 0) -> pa.RecordBatch:
    """:func:`gft_rows`, scored together."""
    return scored(gft_rows(worker, records, size, seed), worker.engine.tokenizer)


def interleaved_seconds(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall times of ``repeats`` calls of each run, taken in turns (a, b, a, b, ...) after one
    untimed warm-up call of each, so that a slow spell of this shared machine hits every run
    alike instead of one of them."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return times


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}


def report(name: str, args: argparse.Namespace, columns: list[str], rows: list[list], extra: dict | None = None) -> dict:
    """Print ``rows`` as a table and write them, the sizes and the machine as JSON."""
    print_table(columns, rows)
    result = {"benchmark": name, "size": asdict(args.size), "machine": machine(),
              "rows": [dict(zip(columns, row)) for row in rows], **(extra or {})}
    out = args.out or RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {out}")
    return result


def print_table(columns: list[str], rows: list[list]) -> None:
    widths = [max(len(str(c)), *(len(_cell(r[i])) for r in rows)) for i, c in enumerate(columns)]
    print(" | ".join(str(c).ljust(w) for c, w in zip(columns, widths)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(_cell(v).ljust(w) for v, w in zip(row, widths)))


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def grpo_stage(size: Size) -> tuple[StageConfig, RunConfig]:
    """The default recipe's GRPO stage at ``size``, and a run config for roles on this machine."""
    config = default_recipe()
    config.rollout.max_new_tokens = size.max_new_tokens
    stage = StageConfig(name="grpo", algorithm="grpo", prompts_per_step=size.prompts, lr=5e-5,
                        group=GroupConfig(expert=0, teacher=0, self=size.group))
    return stage, config


class LocalRoles:
    """The run's roles (rollout, teacher, learner actors) on a local Ray cluster started here,
    or on the one this process is already connected to, which it leaves up."""

    def __init__(self, config: RunConfig, model_path: str, threads: int):
        import ray

        from pipeline.driver.roles import Roles, start_ray

        config.ray.num_cpus = threads
        self.started_ray = not ray.is_initialized()
        start_ray(config)
        self.roles = Roles(config, model_path)

    def __enter__(self):
        return self.roles

    def __exit__(self, *exc) -> None:
        import ray

        self.roles.close()
        if self.started_ray:
            ray.shutdown()


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":  # CUDA runs ahead of Python: time the work, not its launch
        torch.cuda.synchronize()


def _response_tokens(sequences: torch.Tensor, prompt_width: int, eos: int, pad: int) -> int:
    """Real tokens of ``generate``'s output: up to the first EOS, the rest is padding."""
    responses = sequences[:, prompt_width:]
    is_eos = responses == eos
    after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
    return int((~after_eos & (responses != pad)).sum())


def raw_generate(model_path: str, records: list[PromptRecord], params: SamplingParams, counts: list[int],
                 dtype: str = "float32", device: str | torch.device = "cpu") -> Callable[[], None]:
    """The rollout's raw reference: a call of ``model.generate(do_sample=True,
    num_return_sequences=n)`` on the left-padded prompts, with the model as transformers loads it
    (sdpa attention, its own cache), appending its real response tokens to ``counts``."""
    model, tokenizer = load_policy(model_path, dtype)
    model.to(device).eval()
    ids, mask = _left_pad([r.prompt_ids for r in records], tokenizer.pad_token_id)
    ids, mask = ids.to(device), mask.to(device)

    @torch.no_grad()
    def raw():
        out = model.generate(input_ids=ids, attention_mask=mask.long(), do_sample=True, temperature=params.temperature,
                             top_k=0, top_p=params.top_p, num_return_sequences=params.n,
                             max_new_tokens=params.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        counts.append(_response_tokens(out, ids.shape[1], tokenizer.eos_token_id, tokenizer.pad_token_id))
        sync(device)

    return raw


def qwen_shaped_model(folder: Path, tokenizer_path: str) -> str:
    """A random-weight model of Qwen2.5-0.5B's shape with the embedded tokenizer, saved as a
    Hugging Face folder (``pipeline.embedded.build_shaped_model``)."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    return str(save_policy(build_shaped_model(tokenizer, SHAPES["qwen2.5-0.5b"]), tokenizer, folder))
