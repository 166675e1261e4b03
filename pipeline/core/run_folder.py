"""A run's folder belongs to one process at a time.

A new run claims ``output_dir/<name>-<time>`` by creating it (``mkdir`` fails if it is there; the
next suffix is tried), and every run, new or resumed, holds an exclusive lock on the folder's
``.run.lock`` until it ends. Both hold between processes on different nodes writing to one shared
file system: ``mkdir`` is atomic there, and NFS honours POSIX record locks (``fcntl``). The lock
goes with its process, so a run killed outright leaves nothing to clean up before ``--resume``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Self

from pipeline.core.errors import ConfigError

LOCK_FILE = ".run.lock"


def _folder_error(key: str, folder: Path, err: OSError) -> ConfigError:
    reason = "a file is in the way" if isinstance(err, (FileExistsError, NotADirectoryError)) else err.strerror
    return ConfigError(f"{key}={folder}: cannot make a run folder there ({reason}: {err.filename or folder})")


def claim_new(output_dir: Path, name: str) -> Path:
    """Create ``output_dir/<name>-<time>``, or ``...-1``, ``-2``... when another run, here or on
    another node, made it first."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _folder_error("output_dir", output_dir, err) from None
    stamp = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 0
    while True:
        folder = output_dir / (stamp if suffix == 0 else f"{stamp}-{suffix}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            suffix += 1
        except OSError as err:
            raise _folder_error("output_dir", output_dir, err) from None


class RunLock:
    """Held while a run writes into ``run_dir`` (made when missing); a second holder is refused
    with a message naming the first (its process, host and start)."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.fd = Path(run_dir), None

    def __enter__(self) -> Self:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise _folder_error("run folder", self.run_dir, err) from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            raise ConfigError(f"{self.run_dir} is in use by another run ({holder}); two runs may not write into one "
                              "folder. Wait for it to end or stop it, then resume.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  .encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # closing the file releases the lock
