"""Per-step metrics of every stage: ``RUN_DIR/metrics.jsonl`` and TensorBoard (DESIGN §2).

Each ``log`` call writes one JSON line ``{"stage", "step", "global_step", "time", <metric>: value}``
and flushes it, so a killed run keeps what it logged; the same values go to TensorBoard in
``RUN_DIR/tensorboard`` as scalars ``"{stage}/{metric}"`` at ``global_step``.

``global_step`` counts over all stages: a stage's steps follow the previous stage's last one, and
two calls for the same (stage, step) (train metrics, then eval metrics) share it. Reopening a run
folder (resume) appends and picks the stages' offsets back up from the existing file. JSON has no
NaN: a non-finite value is written as ``null`` (the key stays, so the value still counts) and
TensorBoard gets the raw value.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class MetricsLogger:
    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._offsets: dict[str, int] = {}  # stage -> global_step - step
        self._last = -1  # largest global_step so far
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self._offsets.setdefault(row["stage"], row["global_step"] - row["step"])
                    self._last = max(self._last, row["global_step"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill
        self._file = self.path.open("a", encoding="utf-8")
        if self._file.tell() and not self.path.read_bytes().endswith(b"\n"):
            self._file.write("\n")  # end the cut line so the next record starts on its own
        self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def log(self, stage: str, step: int, metrics: dict[str, float]) -> int:
        """Write one step's metrics; returns its global step."""
        step = int(step)
        if stage not in self._offsets:
            self._offsets[stage] = self._last + 1 - step if self._last >= 0 else 0
        global_step = self._offsets[stage] + step
        self._last = max(self._last, global_step)
        record = {"stage": stage, "step": step, "global_step": global_step, "time": time.time()}
        for name, value in metrics.items():
            value = float(value)
            record[name] = value if math.isfinite(value) else None
            self._writer.add_scalar(f"{stage}/{name}", value, global_step)
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        self._writer.flush()
        return global_step

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
            self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
