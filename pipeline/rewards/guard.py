"""Every reward call under a wall-clock timeout, from any thread.

Calls run in worker processes (``pipeline.rewards.worker``). A call that overruns its timeout is
killed together with its process, and a fresh worker takes its place; a call that raises or
returns no finite number is answered by the worker as an error. Either way the row scores 0 and
is counted, and the run goes on. No signals are involved, so this works inside Ray actor threads,
where math-verify's own ``signal.alarm`` timeout cannot.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pipeline
from pipeline.rewards.verifiers import DEFAULT_EXTRACTION

RewardCall = tuple[str, str, str, dict | None]  # data_source, solution_str, ground_truth, extra_info


class RewardFunctionError(ValueError):
    """The reward function cannot be loaded; the message says why."""


@dataclass
class ScoreReport:
    rewards: list[float]
    failures: int = 0  # calls that raised or returned no finite number
    timeouts: int = 0
    first_problem: str | None = None  # one example, for the log

    def note(self, problem: str) -> None:
        if self.first_problem is None:
            self.first_problem = problem


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


@dataclass
class _Worker:
    process: subprocess.Popen
    buffer: bytes = b""
    call: int | None = None  # index of the call in flight
    deadline: float = 0.0
    finalizer: weakref.finalize | None = field(default=None, repr=False)

    @classmethod
    def start(cls, reward_function: str | None, extraction: str, start_timeout_s: float) -> _Worker:
        root = str(Path(pipeline.__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.rewards.worker", reward_function or "", extraction],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        worker = cls(process)
        worker.finalizer = weakref.finalize(worker, _kill, process)
        reply = worker.read(time.monotonic() + start_timeout_s)
        if reply is None or "ready" not in reply:
            worker.stop()
            why = reply["error"] if reply else f"the reward worker did not start within {start_timeout_s:.0f} s"
            raise RewardFunctionError(f"reward function {reward_function or '(built-in)'}: {why}")
        return worker

    def send(self, call: RewardCall, index: int, timeout_s: float) -> None:
        self.call, self.deadline = index, time.monotonic() + timeout_s
        self.process.stdin.write((json.dumps(list(call), default=str) + "\n").encode())
        self.process.stdin.flush()

    def fileno(self) -> int:
        return self.process.stdout.fileno()

    def read_available(self) -> dict | None:
        """The reply, once a whole line is in; ``{"error": ...}`` if the process died."""
        chunk = os.read(self.fileno(), 1 << 16)
        if not chunk:
            return {"error": f"the reward worker exited with code {self.process.wait()}"}
        self.buffer += chunk
        if b"\n" not in self.buffer:
            return None
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def read(self, deadline: float) -> dict | None:
        """Block until a reply or ``deadline``."""
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self], [], [], left)[0] and (reply := self.read_available()) is not None:
                return reply
        return None

    def stop(self) -> None:
        if self.finalizer is not None:
            self.finalizer()


class RewardGuard:
    """Scores calls in ``num_workers`` processes, each call bounded by ``timeout_s`` seconds.

    ``reward_function``: a file defining ``compute_score``, or None for the built-in verifiers,
    which find a response's answer by ``extraction`` (``strict`` or ``lenient``).
    A file that cannot be loaded raises :class:`RewardFunctionError` here, before any scoring.
    """

    def __init__(self, reward_function: str | None = None, timeout_s: float = 10.0, num_workers: int = 1,
                 start_timeout_s: float = 120.0, extraction: str = DEFAULT_EXTRACTION):
        if timeout_s <= 0 or num_workers < 1:
            raise ValueError("a reward guard needs timeout_s > 0 and num_workers >= 1")
        self.reward_function, self.timeout_s, self.start_timeout_s = reward_function, timeout_s, start_timeout_s
        self.extraction = extraction
        self._lock = threading.Lock()
        self._workers = [self._start() for _ in range(num_workers)]

    def _start(self) -> _Worker:
        return _Worker.start(self.reward_function, self.extraction, self.start_timeout_s)

    def _replace(self, worker: _Worker) -> None:
        worker.stop()
        self._workers[self._workers.index(worker)] = self._start()

    def score(self, calls: Sequence[RewardCall]) -> ScoreReport:
        """One reward per call, in order."""
        with self._lock:
            report = ScoreReport(rewards=[0.0] * len(calls))
            waiting = deque(range(len(calls)))
            while waiting or any(w.call is not None for w in self._workers):
                for worker in self._workers:
                    if worker.call is None and waiting:
                        worker.send(calls[waiting[0]], waiting.popleft(), self.timeout_s)
                busy = [w for w in self._workers if w.call is not None]
                wait_s = max(0.0, min(w.deadline for w in busy) - time.monotonic())
                for worker in select.select(busy, [], [], wait_s)[0]:
                    reply = worker.read_available()
                    if reply is None:
                        continue
                    index, worker.call = worker.call, None
                    if "score" in reply:
                        report.rewards[index] = float(reply["score"])
                    else:
                        report.failures += 1
                        report.note(f"call {index}: {reply['error']}")
                        if worker.process.poll() is not None:
                            self._replace(worker)
                now = time.monotonic()
                for worker in [w for w in self._workers if w.call is not None and now >= w.deadline]:
                    report.timeouts += 1
                    report.note(f"call {worker.call}: no answer within {self.timeout_s:g} s")
                    self._replace(worker)
            return report

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []
