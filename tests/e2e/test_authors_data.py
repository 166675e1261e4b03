"""The GFT authors' data layout through a run: candidates as texts in ``extra_info.answer`` and
``extra_info.model_answer``, the reward keyed on a ``source`` column (``data.reward_fn_key``),
and prompts short of teacher answers let through with ``data.short_groups=allow``, counted."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.driver.run import run, summary
from pipeline.recipe.config import load_recipe

pytestmark = pytest.mark.slow

PROMPTS, WITHOUT_TEACHERS = 12, (2, 5, 9)


def _authors_file(assets, path):
    """The embedded task's first prompts, rewritten as the authors' files hold them."""
    rows = pq.read_table(assets.train).slice(0, PROMPTS).to_pylist()
    authors = [{"source": row["data_source"], "prompt": row["prompt"], "ability": row["ability"],
                "reward_model": row["reward_model"],
                "extra_info": {"index": i, "answer": row["extra_info"]["expert_responses"][0],
                               "model_answer": None if i in WITHOUT_TEACHERS else row["extra_info"]["teacher_responses"]}}
               for i, row in enumerate(rows)]
    pq.write_table(pa.Table.from_pylist(authors), path)
    return path


@pytest.fixture(scope="module")
def result(ray_cluster, assets, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("authors")
    train = _authors_file(assets, tmp / "train.parquet")
    stage = "[{name: gft, algorithm: gft, steps: 2, prompts_per_step: 6, group: {expert: 1, teacher: 2, self: 2}}]"
    config = load_recipe(None, [
        f"model.path={assets.base_model}", f"data.train_files=[{train}]", "data.reward_fn_key=source",
        "data.short_groups=allow", "data.eval_files={}", "eval.splits=[]", "rollout.max_new_tokens=8",
        "rollout.num_workers=1", f"stages={stage}", "save_batches=true", f"output_dir={tmp / 'runs'}",
    ])
    return run(config)


def test_a_gft_run_on_the_authors_layout_mixes_expert_teacher_and_self_rows(result):
    expert_rows = 0
    for path in sorted((result.run_dir / "batches").glob("gft-*.arrow")):
        table = pa.ipc.open_file(path).read_all()
        sources = table.column("source").to_pylist()
        assert {"expert", "teacher", "self"} == set(sources)
        rewards = table.column("reward").to_pylist()
        # the embedded expert is always right: its reward proves data_source reached the verifier
        assert all(r == 1.0 for r, s in zip(rewards, sources) if s == "expert")
        expert_rows += sources.count("expert")
    assert expert_rows == PROMPTS  # two steps of 6 prompts: one pass over the file


def test_short_groups_are_logged_per_step_and_counted_in_the_summary(result):
    steps = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    short = [row["short_groups/teacher"] for row in steps if row["stage"] == "gft"]
    assert len(short) == 2 and sum(short) == len(WITHOUT_TEACHERS)  # each prompt once in the pass
    assert all(row["short_groups/expert"] == 0 for row in steps if row["stage"] == "gft")
    assert result.short_groups == {"teacher": len(WITHOUT_TEACHERS)}
    assert f"(data.short_groups=allow): {len(WITHOUT_TEACHERS)} short of teacher rows" in summary(result, 4)
