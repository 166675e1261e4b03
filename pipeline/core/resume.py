"""Resume points: what ``gft run --resume RUN_DIR`` needs to continue a killed run exactly.

A point is a folder ``RUN_DIR/checkpoints/resume/step-<global step>-stage-<index>`` holding
``trainer_state.json`` (the driver's :class:`Progress`: stage, step, data position, evals so far)
and, for a point inside a stage, the learner's state: the policy as a Hugging Face folder, AdamW's
moments and step counts in ``optimizer/`` (a ``torch.distributed.checkpoint`` folder: each learner
rank writes its own shard, and a run may resume on another number of ranks, which read the parts
they hold) and the torch RNG in ``rng_state``. No pickle.

Each point is filled in a temporary folder and renamed into place, and ``trainer_state.json``,
written last, lists every file's size: a point torn anyway (a copy cut short, a lost file) is
recognised and passed over for the one before it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.tensor import DTensor

from pipeline.core.batch import SCHEMA
from pipeline.core.errors import ConfigError
from pipeline.core.files import atomic_dir, safetensors_os_errors

STATE_FILE = "trainer_state.json"
OPTIMIZER_DIR = "optimizer"
RNG_FILE = "rng_state"  # safetensors, named so that no model loader globbing *.safetensors reads it
# rollout.max_staleness k: the self rows of the k steps after the point's, sampled while it
# trained: next_rollout.arrow, then next_rollout.2.arrow ... next_rollout.<k>.arrow
NEXT_ROLLOUT_FILE = "next_rollout.arrow"
FORMAT = 2  # 1: the whole optimizer state in one learner_state.safetensors

logger = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where a run stands, between two steps."""

    stage_index: int = 0  # the stage under way, or the next to start when ``step`` is 0
    step: int = 0  # steps of that stage done
    global_step: int = 0  # steps done over all stages
    policy_version: int = 0
    stage_start: str = ""  # the checkpoint the stage started from: its policy and KL reference
    sampler: tuple[int, int] = (0, 0)  # the prompt sampler's (epoch, offset)
    # the (epoch, offset) of each stage that draws from a share of the prompts (``data_fraction``)
    stage_samplers: dict[str, tuple[int, int]] = field(default_factory=dict)
    evals: dict[str, dict] = field(default_factory=dict)  # policy -> split -> metrics
    checkpoints: dict[str, str] = field(default_factory=dict)  # stage -> its final checkpoint
    metrics_bytes: int = 0  # length of metrics.jsonl up to this point
    consecutive_skips: int = 0  # updates skipped in a row up to this point (``max_consecutive_skips``)
    short_groups: dict[str, int] = field(default_factory=dict)  # source -> groups that came up short of it


@dataclass
class ResumePoint:
    folder: Path
    progress: Progress

    @property
    def order(self) -> tuple[int, int]:
        """Later points sort higher: by global step, then stage (a stage's end and the next
        stage's start share a global step)."""
        return self.progress.global_step, self.progress.stage_index

    @property
    def has_learner_state(self) -> bool:
        return (self.folder / OPTIMIZER_DIR).is_dir()


def resume_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "resume"


def write_point(run_dir: Path, progress: Progress, write_learner_files: Callable[[Path], None] | None = None) -> Path:
    """Write a point atomically; ``write_learner_files(folder)`` adds the learner's files."""
    folder = resume_root(run_dir) / f"step-{progress.global_step:07d}-stage-{progress.stage_index}"
    with atomic_dir(folder) as tmp:
        if write_learner_files is not None:
            write_learner_files(tmp)
        sizes = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        state = {"format": FORMAT, "progress": asdict(progress), "files": sizes}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    return folder


@dataclass
class KeptRollout:
    """A rollout a point kept for a step after it: its rows, its workers' metrics, and how it
    sampled (``workers.sampling.SamplingParams`` as a dict), to be checked against the recipe it
    resumes with."""

    rows: pa.RecordBatch
    metrics: dict[str, float]
    sampling: dict


def kept_rollout_file(index: int) -> str:
    """The file of the rollout a point keeps for the ``index``-th step after it (from 1)."""
    return NEXT_ROLLOUT_FILE if index == 1 else NEXT_ROLLOUT_FILE.replace(".arrow", f".{index}.arrow")


def kept_rollout_files(kept: list[KeptRollout]) -> dict[str, bytes]:
    """The rollouts kept for the steps after a point, in order, as the Arrow IPC files the point
    holds them in (each one's metrics and sampling as its schema's metadata)."""
    files = {}
    for index, rollout in enumerate(kept, start=1):
        sink = pa.BufferOutputStream()
        schema = SCHEMA.with_metadata({"metrics": json.dumps(rollout.metrics), "sampling": json.dumps(rollout.sampling)})
        with pa.ipc.new_file(sink, schema) as writer:
            writer.write_batch(rollout.rows.replace_schema_metadata(schema.metadata))
        files[kept_rollout_file(index)] = sink.getvalue().to_pybytes()
    return files


def read_kept_rollouts(point: ResumePoint) -> list[KeptRollout]:
    """The rollouts a point kept for the steps after it (:func:`kept_rollout_files`), in order."""
    kept = []
    while (path := point.folder / kept_rollout_file(len(kept) + 1)).is_file():
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
        metadata = table.schema.metadata
        (rows,) = table.replace_schema_metadata(None).combine_chunks().to_batches()  # a rollout has rows
        kept.append(KeptRollout(rows, json.loads(metadata[b"metrics"]), json.loads(metadata[b"sampling"])))
    return kept


def _read_point(folder: Path) -> tuple[ResumePoint | None, str]:
    """(the point, "") or (None, why it is torn)."""
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        if state.get("format") != FORMAT:
            return None, f"format {state.get('format')!r}, not {FORMAT}: written by another version of gft-pipeline"
        for name, size in state["files"].items():
            path = folder / name
            if not path.is_file() or path.stat().st_size != size:
                return None, f"{name} is missing or not {size} bytes"
        progress = Progress(**state["progress"])
        progress.sampler = tuple(progress.sampler)
        progress.stage_samplers = {name: tuple(position) for name, position in progress.stage_samplers.items()}
        return ResumePoint(folder, progress), ""
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, f"{STATE_FILE} unreadable: {err}"


def points(run_dir: Path) -> list[ResumePoint]:
    """The intact points of a run, oldest first; torn ones are logged and passed over."""
    found = []
    for folder in sorted(resume_root(run_dir).glob("step-*")):
        point, problem = _read_point(folder)
        if point is None:
            logger.warning("resume point %s is torn (%s); passing over it", folder, problem)
        else:
            found.append(point)
    return sorted(found, key=lambda p: p.order)


def latest_point(run_dir: Path) -> ResumePoint | None:
    intact = points(run_dir)
    return intact[-1] if intact else None


def chosen_point(folder: Path) -> ResumePoint:
    """A point the user named (to resume from before the latest one); every later point of its
    run is deleted, since the resumed run replaces the future they recorded."""
    point, problem = _read_point(folder)
    if point is None:
        raise ConfigError(f"--resume {folder}: this resume point is torn ({problem}); choose another")
    for later in points(run_dir_of(folder)):
        if later.order > point.order:
            shutil.rmtree(later.folder)
    return point


def is_point(folder: Path) -> bool:
    return (folder / STATE_FILE).is_file() and folder.parent.name == resume_root(Path()).name


def run_dir_of(point_folder: Path) -> Path:
    return point_folder.parent.parent.parent


def prune(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` points (torn ones too: they are never used)."""
    keep = {p.folder for p in points(run_dir)[-keep_last:]}
    for folder in resume_root(run_dir).glob("step-*"):
        if folder not in keep:
            shutil.rmtree(folder, ignore_errors=True)


def save_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """AdamW's per-parameter state, by parameter name, into ``folder``; called by every learner
    rank at once, each writing the shard it holds (a sharded model's state is DTensors). Replicas
    hold equal states, which one rank writes. The parameter groups are not saved: the resumed
    stage's recipe sets them."""
    state = get_optimizer_state_dict(model, optimizer)["state"]
    try:
        with _single_process_quietly():
            dcp.save({"optimizer": state}, checkpoint_id=folder, no_dist=not dist.is_initialized())
    except (Exception, CheckpointException) as err:
        # DCP's file writer reports a full disk as a bare "unexpected pos" RuntimeError; with
        # less room left than this rank's part needs, it is the full disk it looks like
        needed = sum(_local_bytes(value) for values in state.values() for value in values.values())
        if shutil.disk_usage(folder.parent).free < needed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder)) from err
        raise


def _local_bytes(tensor: torch.Tensor) -> int:
    return (tensor.to_local() if isinstance(tensor, DTensor) else tensor).nbytes


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Load what :func:`save_optimizer_state` wrote into ``optimizer``, whatever the number of ranks
    that wrote it and that read it now: each rank reads the parts of the tensors it holds."""
    current = get_optimizer_state_dict(model, optimizer)  # the structure to fill, made by a step with lr 0
    with _single_process_quietly():
        dcp.load({"optimizer": current["state"]}, checkpoint_id=folder, no_dist=not dist.is_initialized())
    set_optimizer_state_dict(model, optimizer, current)


@contextlib.contextmanager
def _single_process_quietly():
    with warnings.catch_warnings():  # a single learner has no process group, which DCP warns of
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_rng(path: Path) -> None:
    """The torch RNG states (CPU, and every GPU's), as safetensors."""
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    with safetensors_os_errors(path):
        save_file(tensors, str(path))


def load_rng(path: Path) -> None:
    """Restore the RNG states :func:`save_rng` wrote."""
    tensors = load_file(str(path))
    torch.set_rng_state(tensors["rng.cpu"])
    cuda_keys = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    cuda_states = [tensors[k] for k in cuda_keys]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
