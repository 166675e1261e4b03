"""Atomic writes: the old file survives a failed write, and no temporary file is left."""

import errno
import json
import os

import pytest
from safetensors import SafetensorError

from pipeline.core.files import atomic_dir, atomic_path, replace_dir, safetensors_os_errors, write_json_lines


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_json_lines([{"a": 1}], tmp_path / "rows.jsonl")
    with pytest.raises(RuntimeError, match="crash"), atomic_path(path) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("crash")
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"a": 1}]
    assert os.listdir(tmp_path) == ["rows.jsonl"]


def test_a_new_file_is_readable_by_others(tmp_path):
    path = write_json_lines([{"text": "é"}, {"n": 2}], tmp_path / "sub" / "rows.jsonl")
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)
    assert path.read_text(encoding="utf-8") == '{"text": "é"}\n{"n": 2}\n'


def test_replace_dir_into_a_missing_target(tmp_path):
    src = tmp_path / "new"
    src.mkdir()
    (src / "f").write_text("x")
    replace_dir(src, tmp_path / "dst")
    assert (tmp_path / "dst" / "f").read_text() == "x" and not src.exists()


def test_a_failed_folder_write_keeps_the_old_folder(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError, match="killed"), atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v2, half")
        raise RuntimeError("killed")
    assert os.listdir(tmp_path) == ["ckpt"] and (target / "weights").read_text() == "v1"


def test_safetensors_write_errors_become_the_os_errors_they_are(tmp_path):
    """safetensors' text for a full disk, as a real one printed it (bench/chaos.py hits a real
    full disk); any other SafetensorError passes through as it is."""
    with pytest.raises(OSError) as raised, safetensors_os_errors(tmp_path / "model.safetensors"):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(tmp_path / "model.safetensors")
    with pytest.raises(SafetensorError), safetensors_os_errors(tmp_path):
        raise SafetensorError("invalid dtype")
