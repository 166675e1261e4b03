"""Chaos: faults at random moments of real runs, each run finished with ``gft run --resume``.
Is anything lost?

    python -m bench.chaos [--runs 20] [--seed 0] [--faults kill_group,sigterm,...] [--tear 0.3]
    python -m bench.chaos --replay sigterm@2,kill_learner@6 [--tear 0.3]

A small recipe (warm-up -> GFT -> GRPO, 11 steps, a resume point every 2 steps, one rollout
worker) runs once
without faults (or ``--reference`` names such a run), then ``--runs`` times with faults, each in
its own ``gft`` process group:

- ``kill_group``: SIGKILL of the driver's whole process group (its local Ray cluster included);
- ``kill_rollout``, ``kill_teacher``, ``kill_learner``: SIGKILL of one actor's process, found
  among the driver's descendants by the title Ray gives it (``ray::RolloutWorker`` ...), which
  needs no connection to the run's cluster (Ray's state API would);
- ``sigterm``: SIGTERM to the driver, as ``gft stop`` and cluster schedulers send it;
- ``sigint``, ``sigint_twice``: Ctrl-C, once or twice 0.3 s apart, as a terminal sends it: SIGINT
  to the driver's whole process group;
- ``disk_full``: the run's output folder is a tmpfs of ``--tmpfs-mib`` (root only) and a file
  fills it to within 256 KiB, so the next checkpoint or resume point finds no space; the file is
  removed before the resume.
- ``kill_node``: the run goes to a cluster of two nodes on loopback (``bench.local_cluster``),
  the learner on the head, the rollout and the teacher on the other node, and that node is
  SIGKILLed (its raylet and every process of it); a node with the same resources joins after a
  delay of up to twice the run's ``ray.node_wait_s`` (20 s), so that the run either waits for it
  and goes on, or stops (exit 3) and is resumed once it has joined.

Each run is drawn at ``rollout.max_staleness`` 0, 1 or 2 (``--staleness``; a run with ``kill_node``
at 0: a rollout worker lost on the collective path while it samples ahead is asked again on the
newer weights, which no resume can match) and compared with the fault-free run at the same
staleness. A run's faults are drawn from ``--seed`` and its index (printed): the kind (the runs go through
the kinds in a shuffled order, so that every kind is hit before any is hit twice), the step after
which it hits (one with at least one more step after it) and a delay of up to ``--max-delay``
(0.5 s) into the next one. With probability 0.3 a second fault hits the resumed attempt, later (a
killed rollout or teacher actor is survived in-run, leaving no resumed attempt for it). Before
every resume, with probability ``--tear``, the newest resume point is torn (its largest file cut
in half) or deleted. Each run goes on with ``gft run --resume`` until it exits 0 (at most 6
attempts). ``--replay`` runs one run with the faults it names instead, in order, each hitting the
next attempt once its global step is logged: a drawn run's faults again, or a chosen sequence.

Per run it reports the faults, where each hit (the last step logged), every attempt's exit code
and message, the resumes it took, and whether each stage's final checkpoint is bitwise equal to
the fault-free run's and ``metrics.jsonl`` equal bar timing fields (and ``actor_restarts``,
which counts the faults it survived, and ``weight_sync_bytes``, 0 where a resumed attempt's
rollout loaded the resume point instead of a sync). A table is printed and the rows written as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import torch
import yaml
from safetensors.torch import load_file

from bench.common import RESULTS, ROOT, machine, print_table
from bench.local_cluster import LocalCluster
from pipeline.recipe.config import MAX_STALENESS, load_recipe
from pipeline.recipe.configio import to_dict

RECIPE = [
    "embedded.n_train=256", "embedded.n_test=32", "embedded.n_ood=32",
    "eval.splits=[test]", "eval.max_prompts=16", "eval.pass_k=2",
    "stages.warmup.steps=3", "stages.warmup.prompts_per_step=8",
    "stages.gft.steps=5", "stages.gft.prompts_per_step=4",
    "stages.grpo.steps=3", "stages.grpo.prompts_per_step=4",
    "checkpoint.every=2", "save_batches=true", "rollout.num_workers=1",
]
STEPS = [("warmup", 3), ("gft", 5), ("grpo", 3)]  # the recipe's stages and their steps, in order
ACTORS = {"kill_rollout": "ray::RolloutWorker", "kill_teacher": "ray::TeacherWorker", "kill_learner": "ray::Learner"}
KINDS = ["kill_group", *ACTORS, "sigterm", "sigint", "sigint_twice", "disk_full", "kill_node", "kill_head"]
ON_NODES = ("kill_node", "kill_head")  # run on a cluster of NODES
SECOND_SIGINT_S = 0.3  # Ctrl-C pressed twice: the second this long after the first
# kill_node, kill_head: a run on two nodes, the learner on the head, the rollout and the teacher on the other
NODES = [{"num_cpus": 2, "resources": {"learner_node": 2}}, {"num_cpus": 2, "resources": {"rollout_node": 2}}]
ACROSS_NODES = ("ray.colocate=false", "learner.resources={learner_node: 1}", "rollout.resources={rollout_node: 1}",
                "teacher.resources={rollout_node: 1}")
NODE_WAIT_S = 20  # the run's ray.node_wait_s; a replacement joins up to twice as long after the loss

# differ between any two runs, or count what a fault changed: a restarted actor, and the sync a
# resumed attempt does not make (its rollout workers load the resume point's weights instead)
UNTIMED_OUT = ("time", "step_time_s", "wall_time_s", "actor_restarts", "weight_sync_bytes")
MAX_ATTEMPTS = 6
DISK_MARGIN = 256 * 1024  # left free: room for a few metrics lines, not for a checkpoint
RUN_TIMEOUT_S = 900


@dataclass
class Fault:
    kind: str
    after: int  # the global step (1-based) whose metrics line triggers it
    delay_s: float  # then this long into the next step
    hit: str = ""  # where it hit: the last step logged before it did, or why it did not


@dataclass
class Attempt:
    command: str
    exit_code: int
    message: str  # what the run ended with, from its last `gft:` line on (empty on success)
    wall_s: float


@dataclass
class ChaosRun:
    index: int
    seed: str
    faults: list[Fault]
    staleness: int = 0  # the run's rollout.max_staleness
    tears: list[str] = field(default_factory=list)  # what was done to the newest resume point, per resume
    attempts: list[Attempt] = field(default_factory=list)
    recovered: bool = False
    checkpoints_equal: bool = False
    metrics_equal: bool = False
    evals_equal: bool = False
    differences: list[str] = field(default_factory=list)


def stage_step(global_step: int) -> tuple[str, int]:
    for stage, steps in STEPS:
        if global_step <= steps:
            return stage, global_step
        global_step -= steps
    raise ValueError(global_step)


def plan(index: int, seed: int, kinds: list[str], max_delay_s: float = 0.5,
         stalenesses: tuple[int, ...] = (0,)) -> ChaosRun:
    """Run ``index``'s faults: its kind from a per-seed shuffle of ``kinds`` (every kind once per
    round), its moments from a generator seeded with (seed, index). A fault is triggered by a
    step with at least one more after it, so that it has a step to interrupt. Its staleness is
    drawn from ``stalenesses`` apart, so that the faults drawn do not depend on them."""
    order = random.Random(seed).sample(kinds, len(kinds))
    rng = random.Random(f"{seed}-{index}")
    last = sum(steps for _, steps in STEPS) - 2
    first = Fault(order[index % len(order)], rng.randint(1, last), rng.uniform(0, max_delay_s))
    faults = [first]
    if rng.random() < 0.3 and first.after + 2 <= last:  # a second one, in the resumed attempt
        faults.append(Fault(rng.choice(kinds), rng.randint(first.after + 2, last), rng.uniform(0, max_delay_s)))
    staleness = random.Random(f"{seed}-{index}-staleness").choice(stalenesses)
    if any(fault.kind == "kill_node" for fault in faults):
        staleness = 0
    return ChaosRun(index, f"{seed}-{index}", faults, staleness)


def replayed(spec: str, staleness: int = 0) -> ChaosRun:
    """The run ``--replay KIND@STEP,...`` names: its faults in order, each on the next attempt."""
    last = sum(steps for _, steps in STEPS) - 1  # a fault needs a step after it to interrupt
    faults = []
    for item in spec.split(","):
        kind, _, step = item.partition("@")
        if kind not in KINDS or not step.isdigit() or not 1 <= int(step) <= last:
            raise ValueError(f"--replay: {item!r} is not KIND@STEP with a kind of {', '.join(KINDS)} and a step "
                             f"of 1..{last}")
        faults.append(Fault(kind, int(step), 0.0))
    if any(later.after <= fault.after for fault, later in itertools.pairwise(faults)):
        raise ValueError(f"--replay: {spec}: each fault's step must come after the one before it")
    return ChaosRun(0, "replay", faults, staleness)


def gft(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def run_to_end(args: list[str], log: Path) -> Attempt:
    """``gft ARGS`` run to its end, its stderr in ``log``."""
    return finish(gft(*args), "gft " + " ".join(args[:2]), time.monotonic(), log)


def fault_free_run(out: Path, staleness: int = 0) -> Path:
    """The recipe run once without faults in ``out``, at ``staleness``: the run every chaos run
    at that staleness must end equal to."""
    done = run_to_end(["run", *RECIPE, *at_staleness(staleness), f"output_dir={out}"], out.with_name(f"{out.name}.log"))
    if done.exit_code:
        raise RuntimeError(f"the fault-free run failed (exit {done.exit_code}): {done.message}")
    return run_dir_in(out)


def at_staleness(staleness: int) -> tuple[str, ...]:
    """The recipe's overrides for a run at ``staleness`` (none for the recipe's own, 0)."""
    return (f"rollout.max_staleness={staleness}",) if staleness else ()


def check_reference(run_dir: Path) -> int:
    """``run_dir`` must be a finished run of this recipe, or every comparison with it is void;
    its staleness."""
    if not (run_dir / "eval.json").is_file():
        raise ValueError(f"{run_dir} is not a finished run (no eval.json)")
    ran = yaml.safe_load((run_dir / "config.yaml").read_text())
    staleness = ran.get("rollout", {}).get("max_staleness", 0)
    expected = to_dict(load_recipe(None, [*RECIPE, *at_staleness(staleness)]))
    if {k: v for k, v in ran.items() if k != "output_dir"} != {k: v for k, v in expected.items() if k != "output_dir"}:
        raise ValueError(f"{run_dir} is not a run of bench.chaos's recipe")
    return staleness


def run_dir_in(out: Path) -> Path | None:
    found = [p for p in out.iterdir() if p.is_dir() and (p / "config.yaml").exists()] if out.exists() else []
    return found[0] if found else None


def logged(out: Path, since: float) -> list[tuple[str, int]]:
    """(stage, step) of the training lines this attempt wrote (``time`` after ``since``)."""
    run_dir = run_dir_in(out)
    if run_dir is None or not (run_dir / "metrics.jsonl").exists():
        return []
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line being written
        if row["time"] > since and row["stage"] != "eval":
            rows.append((row["stage"], row["step"]))
    return rows


def inject(fault: Fault, process: subprocess.Popen, out: Path, since: float, rng: random.Random,
           cluster: LocalCluster | None = None) -> Path | threading.Thread | None:
    """Wait for the fault's moment in this attempt, then hit. Returns the file that fills the disk
    (``disk_full``), to be removed before the resume, or the thread that adds a node in place of
    the one killed (``kill_node``), to be joined before it."""
    moment = stage_step(fault.after)
    while moment not in logged(out, since):
        if process.poll() is not None:
            fault.hit = f"not hit: the attempt ended before {moment[0]} step {moment[1]}"
            return None
        time.sleep(0.02)
    time.sleep(fault.delay_s)
    done = logged(out, since)
    fault.hit = f"{done[-1][0]} step {done[-1][1]} done" if done else "before the first step"
    if fault.kind == "kill_group":
        os.killpg(process.pid, signal.SIGKILL)
    elif fault.kind == "sigterm":
        os.kill(process.pid, signal.SIGTERM)
    elif fault.kind in ("sigint", "sigint_twice"):  # Ctrl-C: a terminal signals the whole foreground group
        os.killpg(process.pid, signal.SIGINT)
        if fault.kind == "sigint_twice":
            time.sleep(SECOND_SIGINT_S)
            with contextlib.suppress(ProcessLookupError):  # the first may have stopped it already
                os.killpg(process.pid, signal.SIGINT)
    elif fault.kind in ACTORS:
        title = ACTORS[fault.kind]
        actors = [p for p in psutil.Process(process.pid).children(recursive=True) if _title(p).startswith(title)]
        if not actors:
            fault.hit += f"; no {title} process found"
            return None
        rng.choice(actors).kill()
    elif fault.kind == "disk_full":
        return _fill(out)
    elif fault.kind == "kill_node":
        cluster.kill(len(cluster.nodes) - 1)  # the newest node: the rollout's and the teacher's
        replacement = threading.Timer(rng.uniform(0, 2 * NODE_WAIT_S), cluster.add, args=(NODES[1],))
        replacement.start()
        return replacement
    elif fault.kind == "kill_head":
        cluster.kill(0)
    return None


def _title(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def _fill(out: Path) -> Path:
    """Fill ``out``'s disk to within ``DISK_MARGIN``; the run writing meanwhile may fill it first."""
    filler = out / "filler"
    free = shutil.disk_usage(out).free - DISK_MARGIN
    with contextlib.suppress(OSError), filler.open("wb") as f:  # ENOSPC: full already, as wanted
        chunk = b"\0" * (1 << 20)
        while free > 0:
            free -= f.write(chunk[: min(len(chunk), free)])
            f.flush()
    return filler


def tear(run_dir: Path, rng: random.Random) -> str:
    from pipeline.core.resume import latest_point

    point = latest_point(run_dir)
    if point is None:
        return "no resume point to tear"
    if rng.random() < 0.5:
        shutil.rmtree(point.folder)
        return f"deleted {point.folder.name}"
    largest = max((f for f in point.folder.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    with largest.open("r+b") as f:
        f.truncate(largest.stat().st_size // 2)
    return f"cut {point.folder.name}/{largest.name} in half"


def finish(process: subprocess.Popen, command: str, started: float, log: Path) -> Attempt:
    """Wait for an attempt; its stderr goes to ``log``."""
    try:
        _, err = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, err = process.communicate()
    log.write_text(err)
    try:  # whatever of the attempt's local Ray cluster outlived its driver
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    said = max(err.rfind("gft: stopped:"), err.rfind("gft: error:"))  # what the CLI said last, whole
    tail = err[said:] if said >= 0 else err.strip().splitlines()[-1] if err.strip() else ""
    message = tail.split("\r")[0].strip()  # not the progress bar redrawn after it
    return Attempt(command, process.returncode, message if process.returncode else "", time.monotonic() - started)


def chaos_run(run: ChaosRun, out: Path, reference: Path, tear_probability: float, tmpfs_mib: int,
              overrides: tuple[str, ...] = ()) -> None:
    """``run``'s faults on the recipe at its staleness (with ``overrides``, which must leave its
    training as it is), each followed by ``--resume``, then the result compared with the
    fault-free ``reference`` (a run at the same staleness)."""
    rng = random.Random(f"{run.seed}-inject")
    overrides = (*at_staleness(run.staleness), *overrides)
    mounted = any(f.kind == "disk_full" for f in run.faults)
    out.mkdir(parents=True)
    if mounted:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_mib}m", "tmpfs", str(out)], check=True)
    cluster, moved = None, []  # moved: the resume's ray.address, once the cluster is a new one
    if any(f.kind in ON_NODES for f in run.faults):
        cluster = LocalCluster(NODES, log=out.parent / f"{out.name}-cluster.log")
        overrides = (*overrides, *ACROSS_NODES, f"ray.address={cluster.address}", f"ray.node_wait_s={NODE_WAIT_S}")
    try:
        pending, args = list(run.faults), ["run", *RECIPE, *overrides, f"output_dir={out}"]
        while len(run.attempts) < MAX_ATTEMPTS:
            started_wall, started = time.time(), time.monotonic()
            process = gft(*args)
            fault = pending.pop(0) if pending else None
            left = inject(fault, process, out, started_wall, rng, cluster) if fault else None
            log = out.parent / f"{out.name}-attempt-{len(run.attempts) + 1}.log"
            run.attempts.append(finish(process, "gft " + " ".join(args[:2]), started, log))
            if isinstance(left, threading.Thread):  # the node in place of the one killed has joined
                left.join()
            elif left is not None:
                left.unlink()
            if fault is not None and fault.kind == "kill_head":  # the cluster went with its head: a new one
                cluster.close()
                cluster = LocalCluster(NODES, log=out.parent / f"{out.name}-cluster-{len(run.attempts) + 1}.log")
                moved = [f"ray.address={cluster.address}"]
            if run.attempts[-1].exit_code == 0:
                break
            run_dir = run_dir_in(out)
            if run_dir is None:  # killed before it made its folder: start over
                continue
            if rng.random() < tear_probability:
                run.tears.append(tear(run_dir, rng))
            args = ["run", "--resume", str(run_dir), *moved]
        for fault in pending:
            fault.hit = "not hit: the run had finished"
        run.recovered = run.attempts[-1].exit_code == 0
        if run.recovered:
            compare(run, run_dir_in(out), reference)
    finally:
        if cluster is not None:
            cluster.close()
        if mounted:
            keep = Path(tempfile.mkdtemp(prefix=f"chaos-{run.index:02d}-", dir=out.parent))
            shutil.copytree(out, keep, dirs_exist_ok=True)  # the run's files outlive the tmpfs
            subprocess.run(["umount", str(out)], check=True)
            out.rmdir()
            keep.rename(out)


def compare(run: ChaosRun, run_dir: Path, reference: Path) -> None:
    """Checkpoints bitwise, metrics bar timing, and evals, against the fault-free run's."""
    equal = True
    for stage, _ in STEPS:
        ours, theirs = (load_file(str(d / "checkpoints" / stage / "model.safetensors")) for d in (run_dir, reference))
        if ours.keys() != theirs.keys() or not all(torch.equal(ours[k], theirs[k]) for k in theirs):
            equal = False
            run.differences.append(f"checkpoint {stage} differs")
    run.checkpoints_equal = equal
    run.metrics_equal = metric_rows(run_dir) == metric_rows(reference)
    if not run.metrics_equal:
        run.differences.append("metrics.jsonl differs")
    run.evals_equal = _evals(run_dir) == _evals(reference)
    if not run.evals_equal:
        run.differences.append("eval.json differs")


def metric_rows(run_dir: Path, timed: bool = False) -> list[dict]:
    """The run's metrics.jsonl, less what differs between any two runs unless ``timed``."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows if timed else [{k: v for k, v in row.items() if k not in UNTIMED_OUT and not k.startswith("timing/")
                                and not k.endswith("_per_s")} for row in rows]


def _stalenesses(text: str) -> tuple[int, ...]:
    """``--staleness``'s comma-separated values of rollout.max_staleness."""
    try:
        values = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated whole numbers, e.g. 0,1,2") from None
    if not all(0 <= k <= MAX_STALENESS for k in values):
        raise argparse.ArgumentTypeError(f"{text!r}: each from 0 to {MAX_STALENESS}")
    return values


def _evals(run_dir: Path) -> dict:
    return json.loads((run_dir / "eval.json").read_text())["evals"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs with faults (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="draws every run's faults (default: %(default)s)")
    parser.add_argument("--faults", default=",".join(KINDS), help="the kinds to draw from (default: all)")
    parser.add_argument("--tear", type=float, default=0.3,
                        help="probability of tearing or deleting the newest resume point before a resume")
    parser.add_argument("--max-delay", type=float, default=0.5, metavar="S",
                        help="a fault hits up to this long after its trigger step is logged (default: %(default)s)")
    parser.add_argument("--tmpfs-mib", type=int, default=96, help="size of a disk_full run's output folder")
    parser.add_argument("--workdir", type=Path, help="where the runs go (default: a temporary folder, removed)")
    parser.add_argument("--reference", type=Path, metavar="RUN_DIR", action="append", default=[],
                        help="a finished fault-free run of this recipe to compare with, one per staleness drawn "
                             "(default: run them first)")
    parser.add_argument("--staleness", type=_stalenesses, metavar="K,...",
                        help="the rollout.max_staleness each run is drawn from (default: 0,1,2; a replay: 0)")
    parser.add_argument("--replay", metavar="KIND@STEP,...",
                        help="one run hit by exactly these faults, in order (instead of --runs and --faults)")
    parser.add_argument("--out", type=Path, help="the JSON file to write (default: bench/results/chaos.json)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs: at least 1")
    kinds = args.faults.split(",")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"--faults: unknown {sorted(unknown)}; known: {', '.join(KINDS)}")
    if args.replay:
        if len(args.staleness or (0,)) != 1:
            parser.error("--staleness: a replay runs at one")
        try:
            planned = [replayed(args.replay, (args.staleness or (0,))[0])]
        except ValueError as err:
            parser.error(str(err))
        kinds = sorted({fault.kind for fault in planned[0].faults})
        if "disk_full" in kinds and os.geteuid() != 0:
            parser.error("--replay: disk_full needs root to mount a tmpfs")
    else:
        if "disk_full" in kinds and os.geteuid() != 0:
            print("chaos: disk_full needs root to mount a tmpfs; left out of the draws")
            kinds.remove("disk_full")
        stalenesses = args.staleness or (0, 1, 2)
        planned = [plan(index, args.seed, kinds, args.max_delay, stalenesses) for index in range(args.runs)]

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gft-chaos-"))
    print(f"chaos: seed {args.seed}, {len(planned)} runs, faults {', '.join(kinds)}; runs in {workdir}")
    started = time.monotonic()
    try:
        references = {check_reference(run_dir): run_dir for run_dir in args.reference}
        for staleness in sorted({run.staleness for run in planned} - set(references)):
            references[staleness] = fault_free_run(workdir / f"fault-free-{staleness}", staleness)
    except (RuntimeError, ValueError) as err:
        print(f"chaos: {err}")
        return 1
    out = args.out or RESULTS / "chaos.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = []
    for run in planned:
        chaos_run(run, workdir / f"run-{run.index:02d}", references[run.staleness], args.tear, args.tmpfs_mib)
        runs.append(run)
        print(f"run {run.index:2d} (staleness {run.staleness}): {_row(run)[2]} -> {'recovered' if run.recovered else 'NOT recovered'}, "
              f"{'bitwise equal' if run.checkpoints_equal and run.metrics_equal else 'DIFFERENT'}", flush=True)
        totals = _totals(runs, started)
        out.write_text(json.dumps({"benchmark": "chaos", "seed": args.seed, "faults": kinds, "tear": args.tear,
                                   "max_delay_s": args.max_delay, "machine": machine(), "totals": totals,
                                   "runs": [asdict(r) for r in runs]}, indent=2) + "\n")  # after every run

    totals = _totals(runs, started)
    columns = ["run", "staleness", "faults (where they hit)", "torn before resume", "exit codes", "resumes", "recovered",
               "checkpoints equal", "metrics equal"]
    print()
    print_table(columns, [_row(run) for run in runs])
    print(f"\n{totals['runs']} runs, {totals['recovered']} recovered, {totals['bitwise_equal']} bitwise equal "
          f"(checkpoints, metrics and evals); {totals['wall_s']:.0f} s")
    for run in runs:
        for tried in run.attempts:
            if tried.message:
                print(f"  run {run.index} exit {tried.exit_code}: {tried.message[:300]}")
    print(f"\nwritten: {out}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if totals["bitwise_equal"] == totals["runs"] else 1


def _totals(runs: list[ChaosRun], started: float) -> dict:
    return {"runs": len(runs), "recovered": sum(r.recovered for r in runs),
            "bitwise_equal": sum(r.checkpoints_equal and r.metrics_equal and r.evals_equal for r in runs),
            "wall_s": round(time.monotonic() - started, 1)}


def _row(run: ChaosRun) -> list:
    faults = "; ".join(f"{f.kind} after {'/'.join(map(str, stage_step(f.after)))} ({f.hit})" for f in run.faults)
    return [run.index, run.staleness, faults, "; ".join(run.tears) or "-", " ".join(str(a.exit_code) for a in run.attempts),
            len(run.attempts) - 1, run.recovered, run.checkpoints_equal, run.metrics_equal]


if __name__ == "__main__":
    sys.exit(main())
