"""The driver's refusals: bad data, an impossible batch or a bad path stop a run before Ray
starts, naming what is wrong, with nothing left behind; a skip policy counts what it leaves out;
a rollout a resume point kept is used only for the step it was sampled for."""

import os
import signal
import time
from collections import Counter
from dataclasses import asdict

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.core.data import PromptRecord
from pipeline.core.errors import ConfigError, DataError
from pipeline.core.resume import KeptRollout
from pipeline.driver.run import _load_inputs, _StopSignal, kept_rollout_fits
from pipeline.recipe.config import load_recipe
from workers.sampling import SamplingParams

GOOD = {"data_source": "d", "prompt": [{"role": "user", "content": "1+1?"}], "reward_model": {"ground_truth": "2"},
        "extra_info": {"expert_responses": ["2"], "teacher_responses": ["2", "3", "2"]}}  # the default's group
SMALL_STEPS = ["stages.warmup.prompts_per_step=2", "stages.gft.prompts_per_step=2", "stages.grpo.prompts_per_step=2"]


def _prompt_bytes(content: bytes) -> dict:  # a binary prompt column, as another tool may write it
    return {**GOOD, "prompt": [{"role": "user", "content": content}]}


def _parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _run_args(assets, train, out, *more):
    return ["run", f"model.path={assets.base_model}", f"data.train_files=[{train}]", f"output_dir={out}",
            "data.eval_files={}", "eval.splits=[]", *more]


@pytest.mark.parametrize(("rows", "expected"), [
    ([GOOD, {**GOOD, "extra_info": {"expert_responses": [""]}}], "row 1: field 'extra_info.expert_responses'"),
    ([_prompt_bytes(b"1+1?"), _prompt_bytes(b"caf\xe9")],
     "row 1: field 'prompt[0].content' is not valid UTF-8 (byte 0xe9 at offset 3)"),
    ([{k: v for k, v in GOOD.items() if k != "reward_model"}], "missing column 'reward_model'"),
])
def test_bad_training_data_is_refused_before_ray_starts(assets, tmp_path, capsys, ray_starts, rows, expected):
    train = _parquet(tmp_path / "train.parquet", rows)
    out = tmp_path / "runs"
    assert main(_run_args(assets, train, out)) == 2
    err = capsys.readouterr().err
    assert str(train) in err and expected in err and "Traceback" not in err
    assert not out.exists() or list(out.iterdir()) == []  # no run folder is left behind
    assert ray_starts == []


def test_more_prompts_per_step_than_the_data_holds_is_refused(assets, tmp_path, capsys, ray_starts):
    train = _parquet(tmp_path / "train.parquet", [GOOD] * 3)
    assert main(_run_args(assets, train, tmp_path / "runs", *SMALL_STEPS, "stages.gft.prompts_per_step=4")) == 2
    err = capsys.readouterr().err
    assert "stages.gft.prompts_per_step: 4 prompts per step, but the training data holds 3" in err
    assert ray_starts == []


def test_a_missing_model_or_data_path_is_named(tmp_path, capsys):
    assert main(["run", f"model.path={tmp_path / 'no-model'}"]) == 2
    assert f"model.path: {tmp_path / 'no-model'} is not a folder" in capsys.readouterr().err


def test_skipped_rows_are_counted_and_the_rest_is_used(assets, tmp_path):
    rows = [GOOD, {**GOOD, "reward_model": {"ground_truth": ""}}, GOOD, {**GOOD, "data_source": ""}]
    train = _parquet(tmp_path / "train.parquet", rows)
    overrides = [f"model.path={assets.base_model}", f"data.train_files=[{train}]", "data.bad_rows=skip", *SMALL_STEPS]
    inputs = _load_inputs(load_recipe(None, overrides), tmp_path / "run")
    assert len(inputs.train_records) == 2
    assert inputs.skipped_rows == {str(train): ["row 1: field 'reward_model.ground_truth' is missing or empty",
                                                "row 3: field 'data_source' is missing or empty"]}


def _without_teachers(row: dict) -> dict:
    return {**row, "extra_info": {"expert_responses": row["extra_info"]["expert_responses"]}}


def test_prompts_short_of_their_stage_group_are_refused_before_ray_starts(assets, tmp_path, capsys, ray_starts):
    """The default's GFT stage asks 3 teacher rows a prompt: a file without them is refused,
    naming it, the source and the way to accept it, not trained on self rows without a word."""
    train = _parquet(tmp_path / "train.parquet", [GOOD, _without_teachers(GOOD), GOOD, _without_teachers(GOOD)])
    assert main(_run_args(assets, train, tmp_path / "runs", *SMALL_STEPS)) == 2
    err = capsys.readouterr().err
    assert (f"{train}: 2 of 4 prompts have fewer than 3 teacher candidates, which stages.gft.group.teacher=3 asks for"
            in err)
    assert "data.short_groups=allow" in err and "Traceback" not in err
    assert ray_starts == []


def test_an_sft_stage_on_data_without_experts_is_refused_not_a_traceback(assets, tmp_path, capsys, ray_starts):
    rows = [{**GOOD, "extra_info": {"teacher_responses": ["2", "3", "2"]}}] * 4
    train = _parquet(tmp_path / "train.parquet", rows)
    assert main(_run_args(assets, train, tmp_path / "runs", *SMALL_STEPS)) == 2
    assert "4 of 4 prompts have fewer than 1 expert candidates, which stages.warmup.group.expert=1" \
        in capsys.readouterr().err
    assert ray_starts == []


def test_short_groups_pass_when_allowed_or_filled_by_a_teacher_model(assets, tmp_path):
    train = _parquet(tmp_path / "train.parquet", [GOOD, _without_teachers(GOOD)] * 2)
    base = [f"model.path={assets.base_model}", f"data.train_files=[{train}]", *SMALL_STEPS]
    assert len(_load_inputs(load_recipe(None, [*base, "data.short_groups=allow"]), tmp_path / "a").train_records) == 4
    # a prompt with no teacher rows gets them sampled live; one with some but too few stays short
    live = [*base, f"teacher.model_path={assets.base_model}"]
    assert len(_load_inputs(load_recipe(None, live), tmp_path / "b").train_records) == 4
    partial = _parquet(tmp_path / "partial.parquet", [GOOD, {**GOOD, "extra_info": {
        "expert_responses": ["2"], "teacher_responses": ["2"]}}])
    with pytest.raises(DataError, match="1 of 2 prompts have fewer than 3 teacher candidates"):
        _load_inputs(load_recipe(None, [*live, f"data.train_files=[{partial}]"]), tmp_path / "c")


def test_a_stage_with_files_of_its_own_draws_from_them_and_is_checked_against_them(assets, tmp_path, capsys,
                                                                                 ray_starts):
    """GRPO on prompts of its own (no expert or teacher rows: it needs none) while the others
    train on the run's files; a stage's own files are read once, checked for what that stage
    asks, and named when they fall short."""
    train = _parquet(tmp_path / "train.parquet", [GOOD] * 4)
    rl = _parquet(tmp_path / "rl.parquet", [{**GOOD, "extra_info": {"index": i}} for i in range(3)])
    base = [f"model.path={assets.base_model}", f"data.train_files=[{train}]", *SMALL_STEPS]
    config = load_recipe(None, [*base, f"stages.grpo.train_files=[{rl}]"])
    inputs = _load_inputs(config, tmp_path / "a")
    assert len(inputs.train_records) == 4 and set(inputs.own_records) == {"grpo"}
    assert inputs.draws_apart(config.stage("grpo")) and not inputs.draws_apart(config.stage("gft"))
    assert [r.uid for r in inputs.stage_records(config.stage("grpo"))] == ["rl/0", "rl/1", "rl/2"]
    assert inputs.stage_records(config.stage("gft")) is inputs.train_records
    # the same file as GFT's data: refused for its missing teacher rows, naming the stage that asks
    assert main(["run", *base[1:], f"model.path={assets.base_model}", f"stages.gft.train_files=[{rl}]",
                 f"output_dir={tmp_path / 'runs'}", "data.eval_files={}", "eval.splits=[]"]) == 2
    assert f"{rl}: 3 of 3 prompts have fewer than 1 expert candidates, which stages.gft.group.expert=1" \
        in capsys.readouterr().err
    assert main(["run", *base, f"stages.grpo.train_files=[{tmp_path / 'none.parquet'}]", "data.eval_files={}",
                 "eval.splits=[]", f"output_dir={tmp_path / 'runs'}"]) == 2
    assert f"stages.grpo.train_files: {tmp_path / 'none.parquet'} does not exist" in capsys.readouterr().err
    assert ray_starts == []


def test_the_embedded_retain_family_is_mixed_into_the_warm_up_alone_and_evaluated_as_retain(tmp_path):
    config = load_recipe(None, ["embedded.n_train=64", "embedded.n_test=16", "embedded.n_ood=16",
                                "embedded.n_retain_train=32", "eval.splits=[test,retain]"])
    inputs = _load_inputs(config, tmp_path)
    sources = Counter(r.data_source for r in inputs.stage_records(config.stage("warmup")))
    assert sources == {"gft_embedded/chain_addition": 64, "gft_embedded/largest": 32}
    assert {r.data_source for r in inputs.stage_records(config.stage("gft"))} == {"gft_embedded/chain_addition"}
    retain = inputs.eval_sets["retain"]
    assert len(retain.records) == 16 and {r.data_source for r in retain.records} == {"gft_embedded/largest"}
    trained = {tuple(r.prompt_ids) for r in inputs.own_records["warmup"]}
    assert not trained & {tuple(r.prompt_ids) for r in retain.records}  # held-out problems
    with pytest.raises(ConfigError, match=r"embedded.retain_stages: \['sft'\] are not stages of this recipe"):
        load_recipe(None, ["embedded.n_retain_train=8", "embedded.retain_stages=[sft]"])


def test_wandb_that_cannot_start_is_refused_before_ray_starts(assets, tmp_path, capsys, ray_starts, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    train = _parquet(tmp_path / "train.parquet", [GOOD] * 4)
    out = tmp_path / "runs"
    assert main(_run_args(assets, train, out, *SMALL_STEPS, "logging.backends=[jsonl,wandb]")) == 2
    err = capsys.readouterr().err
    assert "logging.backends: wandb did not start: No API key configured" in err and "Traceback" not in err
    assert "logging.wandb_mode=offline" in err
    assert list(out.iterdir()) == []  # no run folder is left behind
    assert ray_starts == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_first_signal_asks_for_a_stop_and_a_second_interrupts(signum):
    """Ctrl-C or SIGTERM once: noted, for the driver to stop at the next step boundary; again:
    ``KeyboardInterrupt`` where the driver is (the driver reports it as a stop at once)."""
    before = signal.getsignal(signum)
    with _StopSignal() as stop:
        os.kill(os.getpid(), signum)
        deadline = time.monotonic() + 10
        while stop.received is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.received == signum
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signum)
            time.sleep(10)
    assert signal.getsignal(signum) is before


def test_a_kept_rollout_is_used_only_for_the_same_prompts_sampled_the_same_way():
    """A resume point written while later steps sampled ahead keeps their rows; a resume uses
    each only if its step draws the same prompts and samples them as they were sampled."""
    sampled = SamplingParams(n=2, temperature=1.0, top_p=1.0, max_new_tokens=16)
    rows = pa.RecordBatch.from_pydict({"group_id": ["a", "a", "b", "b"]})
    kept = KeptRollout(rows, {}, asdict(sampled))
    records = [PromptRecord(uid, [1, 2], "3", "d") for uid in ("b", "a")]
    assert kept_rollout_fits(kept, SamplingParams(n=2, temperature=1.0, top_p=1.0, max_new_tokens=16), records)
    assert not kept_rollout_fits(kept, SamplingParams(n=2, temperature=1.0, top_p=1.0, max_new_tokens=32), records)
    assert not kept_rollout_fits(kept, SamplingParams(n=4, temperature=1.0, top_p=1.0, max_new_tokens=16), records)
    assert not kept_rollout_fits(kept, sampled, records[:1])
    assert not kept_rollout_fits(kept, sampled, [*records, PromptRecord("c", [1], "3", "d")])
