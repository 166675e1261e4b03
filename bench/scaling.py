"""Scaling: GRPO step time as the group size and the response length double.

    python bench/scaling.py [--quick] [--threads N]

Real steps (``pipeline.driver.stages.train_step``) on the run's Ray roles, the default GRPO stage with
16 prompts: group sizes 4, 8, 16 at 48 new tokens, then budgets of 24, 48, 96 new tokens at
group 8. The embedded base model rarely stops early, so responses fill most of the budget; the
mean response length is reported. The exponent is the least-squares slope of log(step time)
against log(size): 1 means linear.
"""

from __future__ import annotations

import dataclasses
import statistics

import numpy as np
from transformers import AutoTokenizer

from bench.common import LocalRoles, arguments, embedded_assets, grpo_stage, prompts, report, workdir
from pipeline.driver.stages import train_step


def exponent(sizes: list[int], seconds: list[float]) -> float:
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    size = args.size
    groups = [size.group // 2, size.group, size.group * 2]
    lengths = [size.max_new_tokens // 2, size.max_new_tokens, size.max_new_tokens * 2]
    rows, series = [], {}
    with workdir() as folder:
        assets = embedded_assets(folder)
        tokenizer = AutoTokenizer.from_pretrained(str(assets.base_model), local_files_only=True)
        records = prompts(assets, tokenizer, size.prompts)
        stage, config = grpo_stage(size)
        with LocalRoles(config, str(assets.base_model), args.threads) as roles:
            roles.start_stage(str(assets.base_model), stage.lr, stage.weight_decay, stage.max_grad_norm)
            points = [("group", g, size.max_new_tokens) for g in groups] + [("length", size.group, n) for n in lengths]
            for axis, group, budget in points:
                sized = dataclasses.replace(stage, group=dataclasses.replace(stage.group, self=group))
                config.rollout.max_new_tokens = budget
                steps = [train_step(roles, sized, records, config, seed=i) for i in range(size.repeats + 1)][1:]
                seconds = statistics.median(m["step_time_s"] for m in steps)
                mean_length = statistics.mean(m["response_length"] for m in steps)
                rows.append([axis, group, budget, mean_length, seconds])
                series.setdefault(axis, []).append((group if axis == "group" else budget, seconds))
    exponents = {axis: exponent(*map(list, zip(*values))) for axis, values in series.items()}
    report("scaling", args, ["axis", "group", "max_new_tokens", "mean_response_tokens", "step_seconds"], rows,
           {"exponents": exponents})
    print("exponents: " + ", ".join(f"{axis} {value:.2f}" for axis, value in exponents.items()))


if __name__ == "__main__":
    main()
