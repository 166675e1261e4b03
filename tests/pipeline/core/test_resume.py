"""Resume points: atomic, torn ones passed over, pruned, and an exact optimizer/RNG round trip."""

import json
import os

import pytest
import torch

from pipeline.core.batch import make_batch
from pipeline.core.errors import ConfigError
from pipeline.core.resume import (
    NEXT_ROLLOUT_FILE,
    OPTIMIZER_DIR,
    RNG_FILE,
    STATE_FILE,
    KeptRollout,
    Progress,
    chosen_point,
    is_point,
    kept_rollout_files,
    latest_point,
    load_optimizer_state,
    load_rng,
    points,
    prune,
    read_kept_rollouts,
    resume_root,
    run_dir_of,
    save_optimizer_state,
    save_rng,
    write_point,
)


def _progress(global_step, stage_index=1, step=3):
    return Progress(stage_index=stage_index, step=step, global_step=global_step, policy_version=global_step,
                    stage_start="/ckpt/warmup", sampler=(2, 17), evals={"base": {"test": {"accuracy": 0.5}}},
                    checkpoints={"warmup": "/ckpt/warmup"}, metrics_bytes=1234)


def _write_weights(folder):
    (folder / "model.safetensors").write_bytes(b"w" * 100)


def test_a_point_reads_back_as_written(tmp_path):
    written = _progress(7)
    folder = write_point(tmp_path, written, _write_weights)
    point = latest_point(tmp_path)
    assert point.folder == folder and point.progress == written and point.has_learner_state is False
    state = json.loads((folder / STATE_FILE).read_text())
    assert state["files"] == {"model.safetensors": 100}


def test_the_newest_point_wins_by_position_not_by_name(tmp_path):
    write_point(tmp_path, _progress(9, stage_index=1))
    write_point(tmp_path, _progress(10, stage_index=1))
    write_point(tmp_path, _progress(10, stage_index=2, step=0))  # the stage boundary after step 10
    assert latest_point(tmp_path).progress.stage_index == 2
    assert latest_point(tmp_path / "elsewhere") is None


def test_a_torn_point_is_passed_over_for_the_previous_one(tmp_path, caplog):
    write_point(tmp_path, _progress(4), _write_weights)
    cut_short = write_point(tmp_path, _progress(6), _write_weights)
    no_state = write_point(tmp_path, _progress(8), _write_weights)
    bad_json = write_point(tmp_path, _progress(10), _write_weights)
    with (cut_short / "model.safetensors").open("r+b") as f:  # a copy cut short
        f.truncate(40)
    (no_state / STATE_FILE).unlink()
    (bad_json / STATE_FILE).write_text('{"format": 1, "progr')
    assert latest_point(tmp_path).progress.global_step == 4
    assert "model.safetensors is missing or not 100 bytes" in caplog.text
    assert caplog.text.count("passing over it") == 3


def test_a_write_killed_midway_leaves_no_point(tmp_path):
    write_point(tmp_path, _progress(4))

    def killed(folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    try:
        write_point(tmp_path, _progress(6), killed)
    except KeyboardInterrupt:
        pass
    assert [p.progress.global_step for p in points(tmp_path)] == [4]
    assert len(os.listdir(resume_root(tmp_path))) == 1  # no temporary folder left either


def test_prune_keeps_the_newest(tmp_path):
    for step in (2, 4, 6, 8):
        write_point(tmp_path, _progress(step))
    prune(tmp_path, keep_last=2)
    assert [p.progress.global_step for p in points(tmp_path)] == [6, 8]


def _optimizer(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def _train(model, optimizer, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        x = torch.randn(16, 4)  # draws from the RNG the learner state carries
        model(x).pow(2).mean().backward()
        optimizer.step()


def test_optimizer_and_rng_round_trip_exactly(tmp_path):
    """Three steps, save, three more; against: a fresh optimizer that loads the state (and the
    weights) after the first three, then takes the same three: bitwise the same weights. The
    resumed optimizer keeps its own parameter groups (the resumed recipe's)."""
    model, optimizer = _optimizer(0)
    _train(model, optimizer, 3)
    save_optimizer_state(model, optimizer, tmp_path / OPTIMIZER_DIR)
    save_rng(tmp_path / RNG_FILE)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    _train(model, optimizer, 3)

    resumed, resumed_optimizer = _optimizer(1)  # other initial weights and RNG position
    resumed.load_state_dict(weights)
    resumed_optimizer.param_groups[0]["weight_decay"] = 0.2
    load_optimizer_state(resumed, resumed_optimizer, tmp_path / OPTIMIZER_DIR)
    load_rng(tmp_path / RNG_FILE)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in weights.items())  # loading took no step
    assert resumed_optimizer.param_groups[0]["weight_decay"] == 0.2
    resumed_optimizer.param_groups[0]["weight_decay"] = 0.1
    _train(resumed, resumed_optimizer, 3)
    for name, value in model.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def test_a_chosen_point_discards_the_later_ones(tmp_path):
    for step in (2, 4, 6):
        write_point(tmp_path, _progress(step))
    chosen = chosen_point(resume_root(tmp_path) / "step-0000004-stage-1")
    assert chosen.progress.global_step == 4 and is_point(chosen.folder) and run_dir_of(chosen.folder) == tmp_path
    assert [p.progress.global_step for p in points(tmp_path)] == [2, 4]
    (chosen.folder / STATE_FILE).write_text("{")
    with pytest.raises(ConfigError, match="torn"):
        chosen_point(chosen.folder)


def test_the_rollouts_kept_for_the_next_steps_read_back_in_order_and_count_as_point_files(tmp_path):
    """rollout.max_staleness 2: a point written while the next two steps' rollouts sampled ahead
    keeps their rows, their workers' metrics and how each sampled, in step order; a point cut
    short of the second is torn."""
    def rollout(version, tokens_per_s):
        rows = make_batch(group_id=["a", "a", "b"], source=["self"] * 3, prompt_ids=[[1, 2], [1, 2], [3]],
                          response_ids=[[4], [5, 6], [7]], ground_truth=["1", "1", "2"],
                          behaviour_logprobs=[[-0.5], [-1.0, -2.0], [-0.25]], policy_version=[version] * 3)
        return KeptRollout(rows, {"rollout_tokens_per_s": tokens_per_s},
                           {"n": 2, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8})

    kept = [rollout(4, 12.5), rollout(5, 9.0)]
    files = kept_rollout_files(kept)
    assert list(files) == [NEXT_ROLLOUT_FILE, "next_rollout.2.arrow"]
    folder = write_point(tmp_path, _progress(7), lambda tmp: [(tmp / n).write_bytes(b) for n, b in files.items()])
    again = read_kept_rollouts(latest_point(tmp_path))
    assert len(again) == 2
    for read, written in zip(again, kept, strict=True):
        assert read.rows.equals(written.rows) and read.metrics == written.metrics and read.sampling == written.sampling
    (folder / "next_rollout.2.arrow").write_bytes(files["next_rollout.2.arrow"][:100])
    assert latest_point(tmp_path) is None
