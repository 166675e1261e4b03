"""Where a run's metrics go besides ``metrics.jsonl``: TensorBoard, Weights & Biases and MLflow.

Each backend is written through its own library, under the names ``metrics.jsonl`` implies:
``"{stage}/{metric}"`` at ``global_step``. MLflow refuses some characters in a name, so there
``@`` becomes ``_at_`` (``eval/base/test/pass@4`` is ``eval/base/test/pass_at_4``) and any other
character it refuses ``_``. wandb and MLflow are imported only by a run that asks for them.

A sink is opened with the run id it had before (``None`` for a new run) and returns the id to
keep, so that a resumed run goes on in the same wandb or MLflow run. On opening, it reads what
its backend already holds, and from then on sends only the (step, name) pairs it does not:
a reopened run can send it every record of ``metrics.jsonl`` and each arrives once, whatever
an earlier attempt managed to write before it was killed. TensorBoard hides its events from
``purge_step`` on (a resume's redone steps), so those count as not held.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

from pipeline.core.errors import ConfigError

BACKENDS = ("jsonl", "tensorboard", "wandb", "mlflow")
WANDB_MODES = ("online", "offline")
_MLFLOW_REFUSED = re.compile(r"[^\w./\- :]")
_MLFLOW_BATCH = 100  # the most params MLflow takes in one log_batch
logger = logging.getLogger(__name__)


class MetricSink(Protocol):
    name: str

    def open(self, run_id: str | None, purge_step: int | None) -> str | None:
        """Start (or continue, given ``run_id``) the backend's run; returns the id to keep."""

    def log(self, stage: str, metrics: Mapping[str, float], global_step: int, time: float) -> None:
        """One step's metrics (NaN for a value that was not finite), less what the backend holds."""

    def close(self, failed: bool) -> None: ...


class _Sink:
    """What every sink shares: the (global step, name) pairs its backend held when opened."""

    name = ""

    def __init__(self):
        self.held: set[tuple[int, str]] = set()

    def full_name(self, name: str) -> str:
        """``name`` as the backend keeps it."""
        return name

    def missing(self, stage: str, metrics: Mapping[str, float], global_step: int) -> dict[str, float]:
        """``metrics`` by the backend's names, less those it holds at ``global_step``."""
        named = {self.full_name(f"{stage}/{name}"): value for name, value in metrics.items()}
        return {name: value for name, value in named.items() if (global_step, name) not in self.held}


class TensorBoardSink(_Sink):
    name = "tensorboard"

    def __init__(self, run_dir: Path):
        super().__init__()
        self.log_dir = run_dir / "tensorboard"
        self.writer = None

    def open(self, run_id: str | None, purge_step: int | None) -> None:
        from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
        from torch.utils.tensorboard import SummaryWriter

        if self.log_dir.is_dir():
            events = EventAccumulator(str(self.log_dir), size_guidance={SCALARS: 0})  # 0: every event
            events.Reload()
            self.held = {(e.step, tag) for tag in events.Tags()[SCALARS] for e in events.Scalars(tag)
                         if purge_step is None or e.step < purge_step}
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def log(self, stage: str, metrics: Mapping[str, float], global_step: int, time: float) -> None:
        for name, value in self.missing(stage, metrics, global_step).items():
            self.writer.add_scalar(name, value, global_step, walltime=time)
        self.writer.flush()

    def close(self, failed: bool) -> None:
        self.writer.close()


def wandb_history(run_dir: Path, run_id: str) -> list[tuple[int, str, float]]:
    """What wandb has written for run ``run_id`` under ``RUN_DIR/wandb`` (offline or online, every
    attempt's folder), as ``(step, name, value)`` in the order logged. wandb has no Python reader
    of its ``.wandb`` logs: this reads their format (LevelDB's log: 32 KiB blocks of chunks, each
    with a 7-byte header) through wandb's own protobuf ``Record``. A process killed with SIGKILL
    leaves only what wandb's service had written by then."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for path in sorted((run_dir / "wandb").glob(f"*run-*/run-{run_id}.wandb")):
        for chunk in _log_records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            if record.WhichOneof("record_type") == "history":
                items = {"/".join(item.nested_key) or item.key: json.loads(item.value_json)
                         for item in record.history.item}
                rows += [(record.history.step.num, name, value) for name, value in items.items()
                         if not name.startswith("_")]  # wandb's own: _step, _runtime, _timestamp
    return rows


def _log_records(path: Path) -> Iterator[bytes]:
    data, block, chunks, pos = path.read_bytes(), 32 * 1024, b"", 7  # after the header: ":W&B", magic, version
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb run log")
    while pos + 7 <= len(data):
        room = block - pos % block
        _checksum, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if room < 7 or (length, kind) == (0, 0):  # a block's zero-filled tail
            pos += room
            continue
        chunks, pos = chunks + data[pos + 7:pos + 7 + length], pos + 7 + length
        if pos > len(data):
            return  # a record cut short by a kill
        if kind in (1, 4):  # a whole record, or the last chunk of one
            yield chunks
            chunks = b""


class WandbSink(_Sink):
    """A wandb run in ``RUN_DIR/wandb``: online, or offline for ``wandb sync`` to upload later."""

    name = "wandb"

    def __init__(self, run_dir: Path, project: str, run_name: str, mode: str, config: dict):
        super().__init__()
        self.run_dir, self.project, self.run_name, self.mode, self.config = run_dir, project, run_name, mode, config
        self.run = None

    def open(self, run_id: str | None, purge_step: int | None) -> str:
        import wandb
        from google.protobuf.message import DecodeError

        if run_id is not None:
            try:
                self.held = {(step, name) for step, name, _ in wandb_history(self.run_dir, run_id)}
            except (ValueError, DecodeError) as err:  # a log of a wandb whose format this reader does not know
                logger.warning("wandb: could not read what run %s holds (%s); the steps before the resume point are "
                               "sent again", run_id, err)
        try:
            # console off: wandb would otherwise wrap the terminal the progress bars draw on
            self.run = wandb.init(project=self.project, name=self.run_name, id=run_id, resume="allow",
                                  dir=str(self.run_dir), mode=self.mode, config=self.config, reinit="create_new",
                                  settings=wandb.Settings(console="off", silent=True))
        except wandb.errors.Error as err:  # no API key, no network, a refused project: the user's to fix
            hint = " (offline: logging.wandb_mode=offline, then `wandb sync` the run folder's wandb/)" \
                if self.mode == "online" else ""
            raise ConfigError(f"logging.backends: wandb did not start: {err}{hint}") from None
        return self.run.id

    def log(self, stage: str, metrics: Mapping[str, float], global_step: int, time: float) -> None:
        missing = self.missing(stage, metrics, global_step)
        if missing:
            self.run.log(missing, step=global_step)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def mlflow_name(name: str) -> str:
    """A metric's name as MLflow accepts it."""
    return _MLFLOW_REFUSED.sub("_", name.replace("@", "_at_"))


class MlflowSink(_Sink):
    """An MLflow run in the experiment named ``project``, at ``tracking_uri``: by default
    ``$MLFLOW_TRACKING_URI``, else a SQLite store in the run folder (``RUN_DIR/mlflow.db``)."""

    name = "mlflow"

    def __init__(self, run_dir: Path, project: str, run_name: str, tracking_uri: str | None, config: dict):
        super().__init__()
        self.project, self.run_name, self.config = project, run_name, config
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") \
            or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self.client = self.run_id = None

    def open(self, run_id: str | None, purge_step: int | None) -> str:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        for noisy in ("mlflow", "alembic"):  # their INFO lines on creating a store are not the run's news
            logging.getLogger(noisy).setLevel(logging.WARNING)  # after the import, which sets mlflow's level
        try:
            self.client = MlflowClient(self.tracking_uri)
            if run_id is not None:
                self.held = {(m.step, m.key) for key in self.client.get_run(run_id).data.metrics
                             for m in self.client.get_metric_history(run_id, key)}
                self.client.update_run(run_id, status="RUNNING")
            else:
                experiment = self.client.get_experiment_by_name(self.project)
                experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.project)
                run_id = self.client.create_run(experiment_id, run_name=self.run_name).info.run_id
                # the recipe, once: MLflow refuses to change a param, and a resume may override some
                params = [Param(key[:250], str(value)[:6000]) for key, value in _flatten(self.config).items()]
                for i in range(0, len(params), _MLFLOW_BATCH):
                    self.client.log_batch(run_id, params=params[i:i + _MLFLOW_BATCH])
        except MlflowException as err:  # a store it cannot reach or create, a run id it does not hold
            raise ConfigError(f"logging.backends: mlflow could not use {self.tracking_uri}: {err}") from None
        self.run_id = run_id
        return run_id

    def full_name(self, name: str) -> str:
        return mlflow_name(name)

    def log(self, stage: str, metrics: Mapping[str, float], global_step: int, time: float) -> None:
        from mlflow.entities import Metric

        stamp = int(time * 1000)
        missing = self.missing(stage, metrics, global_step)
        if missing:
            self.client.log_batch(self.run_id, metrics=[
                Metric(name, value, stamp, global_step) for name, value in missing.items()])

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def _flatten(tree: Mapping, prefix: str = "") -> dict:
    """``{"a": {"b": 1}, "stages": [{"lr": 2}]}`` -> ``{"a.b": 1, "stages.0.lr": 2}``."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            value = {str(i): v for i, v in enumerate(value)}
        if isinstance(value, Mapping):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
