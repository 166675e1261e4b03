"""Per-step metrics of every stage: ``RUN_DIR/metrics.jsonl``, and the same records sent to the
backends of ``logging.backends`` (``pipeline.core.metric_sinks``; docs/design.md §2).

Each ``log`` call writes one JSON line ``{"stage", "step", "global_step", "time", <metric>: value}``
and flushes it, so a killed run keeps what it logged. JSON has no NaN: a non-finite value is
written as ``null`` (the key stays, so the value still counts); backends get the raw value.

``global_step`` counts over all stages: a stage's steps follow the previous stage's last one, and
two calls for the same (stage, step) (train metrics, then eval metrics) share it; a caller may
also give it outright. Reopening a run folder appends and picks the stages' offsets back up from
the existing file; a resume first cuts the file back to the resume point (``keep_bytes``).

``RUN_DIR/loggers.json`` keeps each backend's run id, so that a resumed run goes on in the same
wandb and MLflow run. Every backend is sent every record of the file each time it is opened,
and sends on only what it does not hold (``pipeline.core.metric_sinks``): one added on resume
gets the steps before it, an attempt killed before its backend wrote its last steps gets them
back, and a step that a resume redoes reaches a backend once. If the recipe changed on resume
(``identity``), the steps it redoes are not the ones wandb and MLflow hold, and neither can take a
value back: each starts a new run, sent the kept records first.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.core.files import atomic_path
from pipeline.core.metric_sinks import MetricSink, TensorBoardSink

logger = logging.getLogger(__name__)
STATE_FILE = "loggers.json"
_KEYS = ("stage", "step", "global_step", "time")


def _read_records(path: Path) -> list[tuple[int, dict]]:
    """Each whole record of a metrics file with the byte offset where its line ends."""
    records, end = [], 0
    if not path.exists():
        return records
    for line in path.read_bytes().splitlines(keepends=True):
        end += len(line)
        try:
            row = json.loads(line)
            if line.endswith(b"\n") and all(key in row for key in _KEYS[:3]):
                records.append((end, row))
        except ValueError:
            continue  # a line cut short by a kill
    return records


class MetricsLogger:
    def __init__(self, run_dir: str | Path, keep_bytes: int | None = None, sinks: Sequence[MetricSink] | None = None,
                 identity: str = ""):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        kept = [row for end, row in _read_records(self.path) if keep_bytes is None or end <= keep_bytes]
        if keep_bytes is not None and self.path.exists():
            with self.path.open("r+b") as f:
                f.truncate(keep_bytes)
        self._offsets: dict[str, int] = {}  # stage -> global_step - step
        self._last = -1  # largest global_step so far
        for row in kept:
            self._offsets.setdefault(row["stage"], row["global_step"] - row["step"])
            self._last = max(self._last, row["global_step"])
        self._file = self.path.open("a", encoding="utf-8")
        if self._file.tell() and not self.path.read_bytes().endswith(b"\n"):
            self._file.write("\n")  # end the cut line so the next record starts on its own
        self._sinks: list[MetricSink] = []
        try:
            self._open_sinks([TensorBoardSink(self.run_dir)] if sinks is None else sinks, kept,
                             purge_step=self._last + 1 if keep_bytes is not None else None, identity=identity)
        except BaseException:
            self.close(failed=True)
            raise

    def _open_sinks(self, sinks: Sequence[MetricSink], kept: list[dict], purge_step: int | None,
                    identity: str) -> None:
        path = self.run_dir / STATE_FILE
        before = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        state = dict(before)  # a backend left out of this attempt keeps its run for a later one
        for sink in sinks:
            run_id = before.get(sink.name, {}).get("run_id")
            if run_id is not None and before[sink.name].get("identity") != identity:
                logger.warning("the recipe changed on resume: %s gets a new run, sent the metrics up to the resume "
                               "point first", sink.name)
                run_id = None
            state[sink.name] = {"run_id": sink.open(run_id, purge_step), "identity": identity}
            self._sinks.append(sink)
            with atomic_path(path) as tmp:  # now, so that an attempt killed while it catches up keeps the id
                tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
            for row in kept:
                metrics = {k: math.nan if v is None else v for k, v in row.items() if k not in _KEYS}
                sink.log(row["stage"], metrics, row["global_step"], row.get("time", time.time()))

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
        now = time.time()
        values = {name: float(value) for name, value in metrics.items()}
        record = {"stage": stage, "step": step, "global_step": global_step, "time": now}
        record |= {name: value if math.isfinite(value) else None for name, value in values.items()}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        for sink in self._sinks:
            sink.log(stage, values, global_step, now)
        return global_step

    def close(self, failed: bool = False) -> None:
        if not self._file.closed:
            self._file.close()
            for sink in self._sinks:
                sink.close(failed)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(failed=exc_type is not None)
