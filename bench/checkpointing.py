"""The learner's peak memory with and without gradient checkpointing, on Qwen2.5-0.5B's shape.

    python -m bench.checkpointing [--quick] [--rows 8] [--micro-rows 4] [--response-tokens 256] [--threads N]

Each setting runs in a process of its own (so that its high-water mark is its own): a
``Learner`` on random weights of Qwen2.5-0.5B's shape (494 M parameters, float32 master weights,
AdamW) takes two GFT updates of ``rows`` rows of a 64-token prompt and a response of
``response-tokens`` tokens, in micro-batches of ``micro-rows`` rows. The first update allocates
AdamW's moments; in the second, the steady state, the second micro-batch's forward runs while
the weights, the moments and the first micro-batch's gradients are all held, as in a stage's
updates of many micro-batches. Reported: the peak resident memory over the
process's life (``ru_maxrss``), what it held before the first update, and each update's time;
beside them, what ``gft plan`` predicts the updates add (gradients, AdamW's moments, activations,
logits: ``pipeline.tools.plan``) against what they added. ``--quick`` uses the embedded tiny model.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import arguments, embedded_assets, qwen_shaped_model, report, workdir
from pipeline.core.batch import make_batch, with_column
from pipeline.recipe.algorithms import objective_for
from pipeline.recipe.config import RunConfig, StageConfig
from pipeline.tools.plan import GIB, SHAPES, ModelShape, learner_terms

PROMPT_TOKENS = 64


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def child(model_path: str, checkpointing: bool, rows: int, micro_rows: int, response_tokens: int, threads: int) -> dict:
    """One setting, measured in this process."""
    import torch

    from workers.learner import Learner, UpdateSettings

    torch.set_num_threads(threads)
    learner = Learner(model_path, gradient_checkpointing=checkpointing)
    stage = StageConfig(name="gft", algorithm="gft", lr=1e-6)
    learner.start_stage(None, stage.lr)
    vocab = min(learner.tokenizer.vocab_size, learner.model.config.vocab_size)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, vocab, PROMPT_TOKENS).tolist()
    # a group each: no prompt shared in a micro-batch, so each holds micro_rows x (prompt + response) tokens
    batch = make_batch(group_id=[f"p{i}" for i in range(rows)], source=["self"] * rows, prompt_ids=[prompt] * rows,
                       response_ids=[rng.integers(0, vocab, response_tokens).tolist() for _ in range(rows)],
                       ground_truth=["0"] * rows)
    batch = with_column(batch, "advantage", np.linspace(-1, 1, rows).astype(np.float32))
    settings = UpdateSettings(objective_for(stage), micro_batch_tokens=micro_rows * (PROMPT_TOKENS + response_tokens),
                              with_reference=False)
    loaded = _peak_gib()
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        learner.update(batch, settings)
        seconds.append(time.perf_counter() - started)
    return {"loaded_gib": loaded, "peak_gib": _peak_gib(), "update_s": seconds}


def predicted_gib(shape: ModelShape, checkpointing: bool, tokens: int) -> float:
    """What the plan says two updates add to a loaded float32 learner on the CPU: every term
    but the master weights, which loading the model holds already."""
    config = RunConfig(stages=[StageConfig(name="gft", algorithm="gft", kl_every=0, micro_batch_tokens=tokens)])
    config.learner.gradient_checkpointing = checkpointing
    return sum(t.bytes for t in learner_terms(shape, config, on_gpu=False) if not t.name.startswith("master")) / GIB


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        model_path, checkpointing, rows, micro_rows, response_tokens, threads = sys.argv[2:]
        print(json.dumps(child(model_path, checkpointing == "1", int(rows), int(micro_rows), int(response_tokens),
                               int(threads))))
        return
    args = arguments(__doc__.split("\n\n")[0], rows=8, **{"micro-rows": 4, "response-tokens": 256})
    with workdir() as folder:
        assets = embedded_assets(Path(folder) / "embedded")
        model = str(assets.base_model) if args.quick else qwen_shaped_model(Path(folder) / "qwen", str(assets.base_model))
        shape = ModelShape.of(json.loads((Path(model) / "config.json").read_text()))
        results = {}
        for checkpointing in (False, True):
            done = subprocess.run([sys.executable, "-m", "bench.checkpointing", "--child", model, str(int(checkpointing)),
                                   str(args.rows), str(args.micro_rows), str(args.response_tokens), str(args.threads)],
                                  capture_output=True, text=True, check=True)
            results[checkpointing] = json.loads(done.stdout.strip().splitlines()[-1])
    tokens = args.micro_rows * (PROMPT_TOKENS + args.response_tokens)  # a micro-batch's
    rows = []
    for on, r in results.items():
        added, predicted = r["peak_gib"] - r["loaded_gib"], predicted_gib(shape, on, tokens)
        ratio = predicted / added if added > 0 else None  # the tiny model (--quick) may add below the loaded peak
        rows.append(["on" if on else "off", r["loaded_gib"], r["peak_gib"], added, predicted, ratio, r["update_s"][1]])
    saved = results[False]["peak_gib"] - results[True]["peak_gib"]
    report("checkpointing", args, ["gradient checkpointing", "held before updates GiB", "peak GiB",
                                   "updates added GiB", "plan predicts GiB", "predicted / added", "second update s"],
           rows, extra={"model": "embedded" if args.quick else "qwen2.5-0.5b-shape", "rows": args.rows,
                        "micro_batch_tokens": tokens, "peak_saved_gib": saved, "shape_in_plan": SHAPES["qwen2.5-0.5b"] == shape})
    print(f"gradient checkpointing lowers the peak by {saved:.2f} GiB")


if __name__ == "__main__":
    main()
