"""Writing files so that no reader, and no crash, ever sees half of one."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

FILE_MODE = 0o644  # mkstemp makes 0600 files; readers may be other users' workers
DIR_MODE = 0o755  # and mkdtemp 0700 folders


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write to; it replaces ``path`` only when the block ends
    without an error, and is removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary sibling folder to fill; it replaces the folder ``path`` only when the block
    ends without an error, and is removed otherwise. A reader (or a resume after a kill) sees
    the old folder or the complete new one, never a partial write."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, DIR_MODE)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, replacing a folder that is there."""
    # os.replace cannot overwrite a non-empty folder: move the old one aside first, rename the
    # new one in, and delete the old copy only after the new one is in place.
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.replace(dst, old / dst.name)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json_lines(rows: list[dict], path: str | os.PathLike[str]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return Path(path)


@contextmanager
def safetensors_os_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """safetensors reports a failed write (a full disk, say) as a ``SafetensorError`` whose text
    holds the OS error number; raise it as the ``OSError`` it is, naming ``path``, so that
    callers can tell a full disk (ENOSPC) from a bug."""
    try:
        yield
    except SafetensorError as err:
        number = re.search(r"os error (\d+)", str(err))
        if number is None:
            raise
        raise OSError(int(number[1]), os.strerror(int(number[1])), str(path)) from err
