import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.run_folder import LOCK_FILE, RunLock, claim_new

ROOT = Path(__file__).resolve().parents[3]


def _python(code: str) -> subprocess.Popen:
    """A separate process, as another `gft` would be: nothing shared with this one."""
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def test_runs_started_at_once_in_one_output_dir_each_claim_a_folder_of_their_own(tmp_path):
    start_at = time.time() + 3.0  # every process claims at the same moment
    processes = [_python(f"import time; from pathlib import Path; from pipeline.core.run_folder import claim_new; "
                         f"time.sleep(max(0.0, {start_at} - time.time())); "
                         f"print(claim_new(Path({str(tmp_path)!r}), 'default'))") for _ in range(6)]
    claimed = [process.communicate(timeout=60)[0].strip() for process in processes]
    assert len(set(claimed)) == 6, claimed
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(os.path.basename(c) for c in claimed)


def test_a_claim_in_a_taken_second_takes_the_next_suffix(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt: "20261203-120000")
    names = [claim_new(tmp_path, "gft").name for _ in range(3)]
    assert names == ["gft-20261203-120000", "gft-20261203-120000-1", "gft-20261203-120000-2"]


@pytest.mark.parametrize("where", ["under-a-file", "a-file"])
def test_an_output_dir_that_cannot_hold_folders_is_refused_naming_the_key(tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    output_dir = blocker / "runs" if where == "under-a-file" else blocker
    with pytest.raises(ConfigError, match=f"output_dir={output_dir}: cannot make a run folder there"):
        claim_new(output_dir, "default")


def _holder(run_dir: Path) -> subprocess.Popen:
    """A process holding ``run_dir``'s lock until its stdin closes."""
    holder = _python(f"import sys; from pathlib import Path; from pipeline.core.run_folder import RunLock\n"
                     f"with RunLock(Path({str(run_dir)!r})):\n    print('held', flush=True); sys.stdin.read()")
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_folder_in_use_is_refused_naming_its_holder_until_the_holder_ends(tmp_path):
    holder = _holder(tmp_path)
    with pytest.raises(ConfigError, match=rf"is in use by another run \(pid {holder.pid} on "), RunLock(tmp_path):
        pass
    holder.communicate(timeout=60)
    with RunLock(tmp_path):  # let go at the end
        assert (tmp_path / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")


def test_a_killed_holder_leaves_the_folder_free(tmp_path):
    holder = _holder(tmp_path / "run")
    holder.kill()
    holder.communicate(timeout=60)
    with RunLock(tmp_path / "run"):
        pass
