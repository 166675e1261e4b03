"""Where an actor's process writes: a log file in the run folder, named in its runtime
environment, so that the console keeps the run's progress bars, eval tables and messages. Each
role calls :func:`redirect_output` first thing in its constructor, before it starts an engine, so
the chatter of the libraries below it (vLLM, Triton, torch, the reward processes it starts) lands
in the file. ``gft run --verbose`` leaves it on the terminal. Imports nothing heavy: the vLLM
environment runs it too."""

from __future__ import annotations

import os
import sys

ACTOR_LOG_ENV = "GFT_ACTOR_LOG"


def point_output_at(path: str | os.PathLike) -> None:
    """Point this process's stdout and stderr (the file descriptors, so that C libraries and
    child processes follow) at ``path``, appending."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def redirect_output() -> None:
    """Output to the file ``GFT_ACTOR_LOG`` names (:func:`point_output_at`; a restarted actor
    keeps its predecessor's lines). Without it, nothing changes."""
    path = os.environ.get(ACTOR_LOG_ENV)
    if path:
        point_output_at(path)
