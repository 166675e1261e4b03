"""Per-step metrics of every stage: ``RUN_DIR/metrics.jsonl`` and TensorBoard (docs/design.md §2).

Each ``log`` call writes one JSON line ``{"stage", "step", "global_step", "time", <metric>: value}``
and flushes it, so a killed run keeps what it logged; the same values go to TensorBoard in
``RUN_DIR/tensorboard`` as scalars ``"{stage}/{metric}"`` at ``global_step``.

``global_step`` counts over all stages: a stage's steps follow the previous stage's last one, and
two calls for the same (stage, step) (train metrics, then eval metrics) share it; a caller may
also give it outright. Reopening a run folder appends and picks the stages' offsets back up from
the existing file; a resume first cuts the file back to the resume point (``keep_bytes``) and
hides TensorBoard's later events, so the steps it redoes appear once. JSON has no NaN: a
non-finite value is written as ``null`` (the key stays, so the value still counts) and
TensorBoard gets the raw value.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class MetricsLogger:
    def __init__(self, run_dir: str | Path, keep_bytes: int | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        if keep_bytes is not None and self.path.exists():
            with self.path.open("r+b") as f:
                f.truncate(keep_bytes)
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
        purge_step = self._last + 1 if keep_bytes is not None else None
        self._writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge_step)

    def tell(self) -> int:
        """Bytes written so far: what a resume point records to cut the file back to."""
        return self._file.tell()

    def log(self, stage: str, step: int, metrics: dict[str, float], global_step: int | None = None) -> int:
        """Write one step's metrics; returns its global step."""
        step = int(step)
        if global_step is None:
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
