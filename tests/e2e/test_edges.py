"""A run's own edges: two ``gft run`` processes started at once with one recipe and one
``output_dir``, as a user would start two seeds (``gft run seed=0 & gft run seed=1 &``), each
claiming a folder of its own, then two ``--resume``s of one run at once, one refused; and a run
given the extreme values that validation accepts, which must run (tests/pipeline/recipe/
test_config_fuzz.py has the values it refuses)."""

import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from bench import chaos
from pipeline.cli import main
from pipeline.core.data import load_prompts, prompt_share
from pipeline.core.resume import latest_point, points

pytestmark = pytest.mark.slow
ONE_STEP_EACH = [*chaos.RECIPE, "stages.warmup.steps=1", "stages.gft.steps=1", "stages.grpo.steps=1",
                 "eval.max_prompts=4"]


def _together(*commands: list[str]) -> list[tuple[int, str]]:
    """Start every command, then wait for each: (exit code, stderr)."""
    processes = [chaos.gft(*command) for command in commands]
    ended = []
    for process in processes:
        try:
            _, err = process.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        ended.append((process.returncode, err))
    return ended


def test_runs_started_at_once_never_share_a_folder_nor_do_two_resumes(tmp_path, monkeypatch):
    # two runs on shared cores: OpenMP threads that spin between parallel regions (the default)
    # take the cores from the other run's; two runs at once took 68 s spinning, 31 s sleeping
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    out = tmp_path / "runs"
    ended = _together(*(["run", *ONE_STEP_EACH, f"seed={seed}", f"output_dir={out}"] for seed in (0, 1)))
    assert [code for code, _ in ended] == [0, 0], [err[-2000:] for _, err in ended]
    folders = sorted(out.iterdir())
    assert len(folders) == 2
    assert {yaml.safe_load((folder / "config.yaml").read_text())["seed"] for folder in folders} == {0, 1}
    for folder in folders:  # each run's steps once, in its own metrics
        steps = [(row["stage"], row["step"]) for row in chaos.metric_rows(folder) if row["stage"] != "eval"]
        assert steps == [("warmup", 1), ("gft", 1), ("grpo", 1)]

    point = latest_point(folders[0]).folder
    ended = _together(["run", "--resume", str(point)], ["run", "--resume", str(point)])
    assert sorted(code for code, _ in ended) == [0, 2], [err[-2000:] for _, err in ended]
    refused = next(err for code, err in ended if code == 2)
    assert f"gft: error: {folders[0]} is in use by another run (pid " in refused and "Traceback" not in refused


EXTREMES = [  # each accepted by validation; together in one short run
    "seed=4294967295", "embedded.task.seed=4294967295", "embedded.model.seed=4294967295",
    "rollout.temperature=1e308", "rollout.max_num_seqs=65536", "rollout.weight_bucket_mb=1048576",
    "stages.gft.tau=1e308", "stages.gft.max_grad_norm=1e308", "stages.gft.eval_every=1000000000000",
    "stages.gft.kl_every=1000000000000", "stages.grpo.micro_batch_tokens=1000000000000",
    "stages.grpo.warmup_steps=1000000000000", "stages.warmup.lr=0", "checkpoint.every=1000000000000",
    "checkpoint.keep_last=1000000000000", "max_consecutive_skips=1000000000000", "eval.max_prompts=1000000000000",
    "reward.timeout_s=86400", "ray.max_actor_restarts=0",
]


def test_the_extreme_values_validation_accepts_run(ray_cluster, tmp_path, capsys):
    code = main(["run", *ONE_STEP_EACH, *EXTREMES, f"output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    (run_dir,) = tmp_path.iterdir()
    steps = [(row["stage"], row["step"]) for row in chaos.metric_rows(run_dir) if row["stage"] != "eval"]
    assert steps == [("warmup", 1), ("gft", 1), ("grpo", 1)]


def test_stages_on_files_of_their_own_or_a_share_of_the_prompts_draw_from_those_alone_and_resume_so(
        ray_cluster, assets, tmp_path, tokenizer):
    """``stages.warmup.train_files``: the warm-up's prompts come from its own file; ``stages.gft.
    data_fraction``: GFT's from the seed's share of the run's distinct prompts only (its repeats
    many); GRPO's from all of them. A resume mid-GFT draws what the uninterrupted run drew."""
    own = tmp_path / "warmup.parquet"
    pq.write_table(pq.read_table(assets.train).slice(0, 12), own)
    overrides = [*ONE_STEP_EACH, f"stages.warmup.train_files=[{own}]", "stages.gft.steps=4",
                 "stages.gft.data_fraction=0.05", "checkpoint.every=1",
                 "checkpoint.keep_last=20"]
    assert main(["run", *overrides, f"output_dir={tmp_path / 'runs'}"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    records = load_prompts(run_dir / "embedded" / "train.parquet", tokenizer, 512)
    share = {r.uid for r in prompt_share(records, 0.05, seed=0)}

    def drawn(stage: str, step: int) -> list[str]:
        with pa.ipc.open_file(run_dir / "batches" / f"{stage}-{step:05d}.arrow") as reader:
            return reader.read_all().column("group_id").to_pylist()

    assert set(drawn("warmup", 1)) <= {r.uid for r in load_prompts(own, tokenizer, 512)}
    gft = [drawn("gft", step) for step in range(1, 5)]
    assert set().union(*gft) <= share and len(share) < len(records) / 10
    assert not set(drawn("grpo", 1)) <= share  # the run's prompts: not the share's few
    (point,) = [p for p in points(run_dir) if (p.progress.stage_index, p.progress.step) == (1, 2)]
    assert point.progress.stage_samplers["gft"] != (0, 0)
    assert main(["run", "--resume", str(point.folder)]) == 0
    assert [drawn("gft", step) for step in (3, 4)] == gft[2:]
