"""Real data through the whole loop: raw GSM8K -> `gft data convert` -> a GFT stage on a local
model folder, with teacher members sampled live (the data has none), rewards from the math
verifier and an eval on converted GSM8K test rows."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.driver.run import run
from pipeline.recipe.config import load_recipe

pytestmark = pytest.mark.slow

PROMPTS = 24


def _converted(shared_data, tmp_path, split):
    head = tmp_path / f"{split}_raw.parquet"
    pq.write_table(pq.read_table(shared_data / "gsm8k" / f"{split}.parquet").slice(0, PROMPTS), head)
    out = tmp_path / f"gsm8k_{split}.parquet"
    assert main(["data", "convert", str(head), "--out", str(out), "--split", split]) == 0
    return out


@pytest.fixture(scope="module")
def result(ray_cluster, assets, shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gsm8k")
    train, test = _converted(shared_data, tmp, "train"), _converted(shared_data, tmp, "test")
    stage = ("[{name: gft, algorithm: gft, steps: 2, prompts_per_step: 4, lr: 1.0e-4, "
             "group: {expert: 1, teacher: 2, self: 2}}]")
    config = load_recipe(None, [
        f"model.path={assets.base_model}", f"teacher.model_path={assets.base_model}",
        f"data.train_files=[{train}]", f"data.eval_files={{gsm8k: {test}}}", "data.max_prompt_length=1200",
        "eval.splits=[gsm8k]", "eval.max_prompts=4", "eval.pass_k=2", "eval.max_new_tokens=8",
        "rollout.max_new_tokens=8", "rollout.num_workers=1", f"stages={stage}", "save_batches=true", f"output_dir={tmp / 'runs'}",
    ])
    return run(config)


def test_gft_groups_on_gsm8k_hold_expert_live_teacher_and_self_rows(result):
    files = sorted((result.run_dir / "batches").glob("gft-*.arrow"))
    assert len(files) == 2
    for path in files:
        table = pa.ipc.open_file(path).read_all()
        sources = table.column("source").to_pylist()
        assert sources.count("expert") == 4 and sources.count("teacher") == 8 and sources.count("self") == 8
        rewards = dict(zip(range(table.num_rows), table.column("reward").to_pylist()))
        # GSM8K's own worked solutions, converted, are judged right by the math verifier
        assert all(rewards[i] == 1.0 for i, s in enumerate(sources) if s == "expert")
        assert set(table.column("data_source").to_pylist()) == {"openai/gsm8k"}


def test_the_gft_checkpoint_is_evaluated_on_gsm8k(result):
    assert set(result.evals) == {"base", "gft"}
    assert result.evals["gft"]["gsm8k"]["prompts"] == 4
    assert (result.run_dir / "generations" / "gft" / "gsm8k.jsonl").is_file()
