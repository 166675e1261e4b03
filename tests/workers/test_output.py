"""An actor's output to a file in the run folder: Python's, C's and its children's alike."""

import subprocess
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])

PROBE = """
import os, subprocess, sys
from workers.output import redirect_output
redirect_output()
print("from python")
print("to stderr", file=sys.stderr)
os.write(1, b"from the file descriptor\\n")
subprocess.run([sys.executable, "-c", "print('from a child')"], check=True)
"""


def _probe(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)


def test_an_actors_output_goes_to_its_log_file_appending(tmp_path):
    log = tmp_path / "logs" / "rollout-0.log"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ROOT, "GFT_ACTOR_LOG": str(log)}
    for _ in range(2):  # a restarted actor appends to its predecessor's file
        done = _probe(env)
        assert done.stdout == "" and done.stderr == ""
    lines = log.read_text().splitlines()
    assert sorted(lines) == sorted(["from python", "to stderr", "from the file descriptor", "from a child"] * 2)


def test_without_a_log_file_the_output_stays_where_it_was(tmp_path):
    done = _probe({"PATH": "/usr/bin:/bin", "PYTHONPATH": ROOT})
    assert sorted(done.stdout.splitlines()) == ["from a child", "from python", "from the file descriptor"]
    assert done.stderr == "to stderr\n"
