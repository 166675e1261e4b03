"""`gft compare` end to end on a tiny budget: the runs, the report, and a second call that is
answered from the cache without training."""

import pytest
import ray

from pipeline import run as run_module
from pipeline.cli import main

pytestmark = pytest.mark.slow

TINY = ["stages.warmup.steps=4", "stages.gft.steps=2", "stages.grpo.steps=2", "eval.splits=[test]",
        "eval.max_prompts=6", "eval.max_new_tokens=8", "rollout.max_new_tokens=8",
        "embedded.n_train=128", "embedded.n_test=16", "embedded.n_ood=16"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    argv = ["compare", *TINY, "--pipelines", "grpo,sft,gft", "--seeds", "2", "--eval-every", "1", "--out", str(out)]
    assert main(argv) == 0
    yield argv, out
    ray.shutdown()


def test_the_report_covers_every_pipeline_and_seed(compared):
    _, out = compared
    runs = sorted(p.name.rsplit("-", 1)[0] for p in (out / "runs").iterdir() if (p / "eval.json").exists())
    assert runs == ["base", "gft-seed0", "gft-seed1", "grpo-seed0", "grpo-seed1", "sft-seed0", "sft-seed1"]
    report = (out / "report" / "report.md").read_text()
    for pipeline in ("grpo", "sft", "gft"):
        assert f"\n| {pipeline} | " in report
    assert "Seeds [0, 1]" in report and "GFT -> GRPO beats SFT -> GRPO" in report
    assert (out / "report" / "report.html").stat().st_size > 10_000  # the four plots are inside


def test_a_second_call_is_answered_from_the_cache(compared, monkeypatch):
    argv, out = compared
    calls = []
    monkeypatch.setattr(run_module, "run", lambda *args, **kwargs: calls.append(args))
    before = (out / "report" / "summary.json").read_text()
    assert main(argv) == 0
    assert calls == []
    assert (out / "report" / "summary.json").read_text() == before
