"""``recipes/qwen2.5-0.5b-shape.yaml`` run once and measured: each role's peak memory, each
phase's time per step, the weight sync's bytes and time.

    python -m bench.real_shape [--quick]

It builds the recipe's assets (``gft build-default --shape qwen2.5-0.5b``) in a temporary folder,
runs ``gft run`` on them and, every half second, reads the peak resident memory (Linux's
high-water mark) of every process of the run, by the title Ray gives it (``ray::Learner``,
``ray::RolloutWorker``, ``ray::TeacherWorker``; the driver is ``gft run``); the largest per role is
reported. Phase times are each stage's mean over its steps, from ``metrics.jsonl``.
``--quick`` runs the recipe's roles on the embedded tiny model instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench.common import ROOT, arguments, report, workdir

RECIPE = ROOT / "recipes" / "qwen2.5-0.5b-shape.yaml"
ROLES = {"ray::Learner": "learner", "ray::RolloutWorker": "rollout", "ray::TeacherWorker": "teacher"}
PHASES = ["rollout_s", "score_s", "advantage_s", "update_s", "weight_sync_s"]
GIB = 1 << 30


def _role(process: psutil.Process) -> str | None:
    try:
        title = " ".join(process.cmdline())
    except psutil.Error:
        return None
    return next((role for prefix, role in ROLES.items() if title.startswith(prefix)), None)


def _peak(process: psutil.Process) -> int:
    try:
        status = Path(f"/proc/{process.pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM")), 0)


def run_measured(args: list[str]) -> tuple[int, dict[str, float], float]:
    """``gft ARGS`` with its processes' peak memory sampled: (exit code, role -> peak GiB, seconds)."""
    started = time.perf_counter()
    driver = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    peaks: dict[str, float] = {}
    root = psutil.Process(driver.pid)
    while driver.poll() is None:
        peaks["driver"] = max(peaks.get("driver", 0.0), _peak(root) / GIB)
        for process in psutil.process_iter():  # Ray's workers are children of its raylet, not of the driver
            role = _role(process)
            if role is not None:
                peaks[role] = max(peaks.get(role, 0.0), _peak(process) / GIB)
        time.sleep(0.5)
    if driver.returncode:
        print(driver.stderr.read()[-3000:], file=sys.stderr)
    return driver.returncode, peaks, time.perf_counter() - started


def main() -> None:
    args = arguments(__doc__.split("\n\n")[0])
    with workdir() as folder:
        assets = Path(folder) / "assets"
        build = ["build-default", "--out", str(assets)] + ([] if args.quick else ["--shape", "qwen2.5-0.5b"])
        subprocess.run([sys.executable, "-m", "pipeline.cli", *build], cwd=ROOT, check=True, capture_output=True)
        overrides = [f"model.path={assets / 'base_model'}", f"data.train_files=[{assets / 'train.parquet'}]",
                     f"data.eval_files={{test: {assets / 'test.parquet'}}}", f"output_dir={Path(folder) / 'runs'}"]
        code, peaks, seconds = run_measured(["run", str(RECIPE), *overrides])
        if code:
            raise SystemExit(f"gft run exited {code}")
        (run_dir,) = (Path(folder) / "runs").iterdir()
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = []
    for stage in ("warmup", "gft", "grpo"):
        steps = [line for line in lines if line["stage"] == stage]
        mean = {phase: sum(s.get(f"timing/{phase}", 0.0) for s in steps) / len(steps) for phase in PHASES}
        rows.append([stage, len(steps), *(mean[p] for p in PHASES), max(s.get("weight_sync_bytes", 0) for s in steps) / 2**20,
                     sum(s["step_time_s"] for s in steps) / len(steps)])
    restarts = sum(line.get("actor_restarts", 0) for line in lines)  # each step counts its own
    report("real_shape", args, ["stage", "steps", *PHASES, "sync MiB", "step s"], rows,
           extra={"peak_gib": peaks, "wall_s": seconds, "actor_restarts": restarts,
                  "model": "embedded" if args.quick else "qwen2.5-0.5b-shape"})
    print(f"actor processes restarted (Ray's memory monitor kills one when the node nears its limit): {restarts:g}")
    print("peak memory (GiB): " + ", ".join(f"{role} {gib:.2f}" for role, gib in sorted(peaks.items())))


if __name__ == "__main__":
    main()
