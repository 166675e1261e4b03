"""`gft compare` end to end on a tiny budget, with a learning-rate sweep and the retain split: the
runs, the report, and a second call that is answered from the cache without training."""

import json
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.driver import run as run_module

pytestmark = pytest.mark.slow

# the retain family in the warm-up and its split in every eval: forgetting measured at no run's cost
TINY = ["stages.warmup.steps=4", "stages.gft.steps=2", "stages.grpo.steps=2", "eval.splits=[test,retain]",
        "eval.max_prompts=6", "eval.max_new_tokens=8", "rollout.max_new_tokens=8", "embedded.n_retain_train=64",
        "embedded.n_train=128", "embedded.n_test=16", "embedded.n_ood=16", "rollout.num_workers=1"]


@pytest.fixture(scope="module")
def compared(ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    # one sweep seed: the choice over several (mean, standard error, the tie rule) is
    # tests/pipeline/tools/test_compare.py's, on the same code with the runs stood in for
    argv = ["compare", *TINY, "--pipelines", "grpo:1,sft,gft", "--seeds", "2", "--eval-every", "1", "--out", str(out),
            "--sweep-lr", "1e-4,1e-3", "--sweep-seeds", "1", "--sweep-extensions", "0", "--val-prompts", "16"]
    assert main(argv) == 0
    return argv, out


def test_the_report_covers_every_pipeline_and_seed(compared):
    _, out = compared
    runs = sorted(p.name.rsplit("-", 1)[0] for p in (out / "runs").iterdir() if (p / "eval.json").exists())
    sweep = [f"sweep-{name}-lr{lr}-seed{seed}" for name in ("gft", "sft") for lr in ("0.0001", "0.001")
             for seed in (1000,)]
    assert runs == ["base", "gft-seed0", "gft-seed1", "grpo-seed0", "sft-seed0", "sft-seed1", *sweep]  # grpo:1
    report = (out / "report" / "report.md").read_text()
    for pipeline, seeds in (("grpo", 1), ("sft", 2), ("gft", 2)):
        assert f"\n| {pipeline} | {seeds} | " in report
    assert "Seeds [0, 1]" in report and "GFT -> GRPO beats SFT -> GRPO" in report
    # each method's runs use the rate its sweep chose on the held-out problems after GRPO, and the report says so
    chosen = json.loads((out / "report" / "summary.json").read_text())["learning_rates"]
    assert set(chosen) == {"sft", "gft"} and set(chosen["gft"]["val_pass@1_after_grpo"]) == {"0.0001", "0.001"}
    assert chosen["gft"]["seeds"] == [1000]
    for pipeline in ("sft", "gft"):
        (folder,) = (out / "runs").glob(f"{pipeline}-seed1-*")
        stage_one = yaml.safe_load((folder / "config.yaml").read_text())["stages"][0]
        assert stage_one["lr"] == chosen[pipeline]["lr"]
    assert "## Learning rates, chosen for the end of RL on held-out problems" in report
    assert "## Forgetting: the `retain` split" in report and "\n| gft | 2 | " in report.split("## Forgetting")[1]
    base = yaml.safe_load(next((out / "runs").glob("base-*/config.yaml")).read_text())
    assert [Path(f).name for f in base["stages"][0]["train_files"]] == ["train.parquet", "retain_train.parquet"]
    assert (out / "report" / "report.html").stat().st_size > 10_000  # the four plots are inside


def test_a_second_call_is_answered_from_the_cache(compared, monkeypatch):
    argv, out = compared
    calls = []
    monkeypatch.setattr(run_module, "run", lambda *args, **kwargs: calls.append(args))
    before = (out / "report" / "summary.json").read_text()
    assert main(argv) == 0
    assert calls == []
    assert (out / "report" / "summary.json").read_text() == before
