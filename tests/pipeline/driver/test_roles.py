"""The Ray roles together on a real local cluster: a GFT step, the weight sync, and actors
whose processes are killed mid-call. The rollout tests run with each backend: ``vllm`` is a real
vLLM engine (its CPU build here) in its own environment, ``.venv-vllm`` (``make vllm``)."""

import os
import signal
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import ray
from safetensors.torch import load_file

from pipeline.core.batch import with_column
from pipeline.core.data import load_prompts
from pipeline.driver.roles import Roles
from pipeline.driver.rollout_env import check_rollout_environment
from pipeline.driver.stages import train_step
from pipeline.recipe.algorithms import objective_for
from pipeline.recipe.config import GroupConfig, RunConfig, StageConfig
from workers.learner import UpdateSettings
from workers.sampling import SamplingParams
from workers.weights import FlatWeights, SharedWeights

pytestmark = pytest.mark.slow  # actors on the session's Ray cluster


@pytest.fixture(scope="module")
def roles(ray_cluster, assets, request):
    """Roles with the rollout backend the test names (``indirect`` parametrization), else hf; two
    hf workers, so that a call is split between them and a sync reaches each."""
    config = RunConfig(seed=0)
    config.ray.num_cpus = 2  # the actors' torch threads
    config.rollout.backend = getattr(request, "param", "hf")
    config.rollout.num_workers = 2 if config.rollout.backend == "hf" else 1
    check_rollout_environment(config)
    roles = Roles(config, str(assets.base_model))
    yield roles, config
    roles.close()


@pytest.mark.parametrize("roles", ["hf", "vllm"], indirect=True)
@pytest.mark.parametrize("sync", ["shared-memory", "object-store", "collective"])
def test_rollout_samples_with_the_learners_new_weights_after_a_sync(roles, assets, tokenizer, sync, monkeypatch):
    """Each way weights travel; ``collective``: broadcast in a weight group, in buckets of 64 KiB
    (the embedded model's 3.4 MB in many)."""
    roles, config = roles
    assert roles.shared_memory and roles.sync_plan is None  # one machine: weight_sync auto chose shared memory
    monkeypatch.setattr(roles, "shared_memory", sync == "shared-memory")  # False: as if the workers were on other nodes
    if sync == "collective":
        monkeypatch.setattr(roles, "sync_plan", ray.get(roles.learner.weight_plan.remote(1 << 16)))
        assert len(roles.sync_plan.bucket_ends) > 10
        roles._form_weight_group()
    records = load_prompts(assets.train, tokenizer, 512)[:6]
    stage = StageConfig(name="gft", algorithm="gft", lr=1e-3, prompts_per_step=6)
    roles.start_stage(str(assets.base_model), stage.lr, stage.weight_decay, stage.max_grad_norm)
    version = ray.get(roles.learner.__ray_call__.remote(lambda learner: learner.version))
    metrics = train_step(roles, stage, records, config, seed=0)
    assert metrics["policy_version"] == version + 1
    for source in ("expert", "teacher", "self"):
        assert f"reward/{source}" in metrics
    if sync == "collective":
        assert roles.pending is None  # nothing crosses Ray: the rollout call starts the broadcast
    else:
        assert type(ray.get(roles.pending)) is (SharedWeights if sync == "shared-memory" else FlatWeights)

    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=12)
    assert roles.stale == set(range(len(roles.rollouts)))
    batch, rollout_metrics = roles.rollout(records, params, seed=5)  # takes the new weights first
    assert not roles.stale
    parameters = sum(t.numel() for t in load_file(str(assets.base_model / "model.safetensors")).values())
    assert rollout_metrics["weight_load_bytes"] == 4 * parameters * len(roles.rollouts)  # float32, to each worker
    assert set(batch.column("policy_version").to_pylist()) == {version + 1}
    learner = np.concatenate(ray.get(roles.learner.response_log_probs.remote(batch)))
    behaviour = np.concatenate(batch.column("behaviour_logprobs").to_pylist())
    np.testing.assert_allclose(behaviour, learner, atol=1e-4)

    # one more update without a sync: the rollout's log-probs are now stale, and visibly so
    weighted = with_column(batch, "advantage", np.linspace(-1, 1, batch.num_rows))
    ray.get(roles.learner.update.remote(weighted, UpdateSettings(objective_for(stage), micro_batch_tokens=512)))
    stale = np.concatenate(ray.get(roles.learner.response_log_probs.remote(batch)))
    assert np.abs(stale - behaviour).max() > 1e-3


def test_a_chord_step_imitates_the_expert_beside_grpo_on_the_policys_own_samples(roles, assets, tokenizer, tmp_path):
    """A CHORD step on the real roles: expert rows from the data beside the rollout's, mu as its
    schedule gives it at that step, and the SFT term the expert tokens' mean NLL under the policy
    the step started from."""
    roles, config = roles
    records = load_prompts(assets.train, tokenizer, 512)[:4]
    stage = StageConfig(name="chord", algorithm="chord", steps=10, lr=1e-3, prompts_per_step=4,
                        group=GroupConfig(expert=1, teacher=0, self=3), mu_peak=0.8, mu_valley=0.2)
    roles.load_policy(str(assets.base_model), 0)
    roles.start_stage(None, stage.lr, stage.weight_decay, stage.max_grad_norm)
    metrics = train_step(roles, stage, records, config, seed=0, batch_dump=tmp_path / "batch.arrow", step=6)
    assert metrics["chord_mu"] == pytest.approx(0.5)  # half-way down the cosine from 0.8 to 0.2
    assert {key for key in metrics if key.startswith("reward/")} == {"reward/expert", "reward/self"}
    with pa.ipc.open_file(tmp_path / "batch.arrow") as reader:
        batch = reader.read_all().combine_chunks().to_batches()[0]
    expert = batch.filter(pc.equal(batch.column("source"), "expert"))
    assert expert.num_rows == 4
    roles.load_policy(str(assets.base_model), 0)  # the policy the step's loss was computed on
    nll = -np.concatenate(ray.get(roles.learner.response_log_probs.remote(expert)))
    assert metrics["sft_loss"] == pytest.approx(float(nll.mean()), rel=1e-4)


def test_sharded_learners_broadcast_to_a_vllm_engine_that_then_samples_their_policy(ray_cluster, assets, tokenizer):
    """2 FSDP learners and a vLLM worker in a weight group (``rollout.weight_sync: collective``):
    after an update the engine's behaviour log-probs are the learners' own."""
    config = RunConfig(seed=0)
    config.ray.num_cpus = 3
    config.learner.num_workers, config.learner.fsdp = 2, True
    config.rollout.backend, config.rollout.weight_sync, config.rollout.weight_bucket_mb = "vllm", "collective", 1
    check_rollout_environment(config)
    roles = Roles(config, str(assets.base_model))
    try:
        assert roles.sync_plan is not None and len(roles.sync_plan.bucket_ends) > 1
        records = load_prompts(assets.train, tokenizer, 512)[:6]
        stage = StageConfig(name="gft", algorithm="gft", lr=1e-3, prompts_per_step=6)
        roles.start_stage(None, stage.lr, stage.weight_decay, stage.max_grad_norm)
        train_step(roles, stage, records, config, seed=0)
        batch, metrics = roles.rollout(records, SamplingParams(n=2, temperature=1.0, max_new_tokens=12), seed=5)
        assert metrics["weight_load_bytes"] == roles.sync_plan.nbytes and not roles.stale
        assert set(batch.column("policy_version").to_pylist()) == {1}
        learner = np.concatenate(ray.get([rank.response_log_probs.remote(batch) for rank in roles.learners])[0])
        behaviour = np.concatenate(batch.column("behaviour_logprobs").to_pylist())
        np.testing.assert_allclose(behaviour, learner, atol=1e-4)
    finally:
        roles.close()


def test_reward_timeouts_work_in_a_threaded_ray_actor(roles, assets, tokenizer, tmp_path):
    """A Ray actor with max_concurrency > 1 runs methods off the main thread, where math-verify's
    signal-based timeout cannot work; the reward guard's timeout does."""
    from pipeline.core.batch import make_batch
    from workers.teacher import TeacherWorker

    reward = tmp_path / "reward.py"
    reward.write_text("import time\n\ndef compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
                      "    if 'slow' in solution_str:\n        time.sleep(3600)\n"
                      "    return float(solution_str == ground_truth)\n")
    teacher = ray.remote(num_cpus=0, max_concurrency=2)(TeacherWorker).remote(
        str(assets.base_model), str(reward), reward_timeout_s=1.0
    )
    texts = ["3", "slow", "4"]
    batch = make_batch(
        group_id=["g"] * 3, source=["self"] * 3, prompt_ids=[[1]] * 3,
        response_ids=[tokenizer.encode(t, add_special_tokens=False) for t in texts],
        ground_truth=["3"] * 3, data_source=["d"] * 3,
    )
    scored, metrics = ray.get(teacher.score.remote(batch), timeout=60)
    assert scored.column("reward").to_pylist() == [1.0, 0.0, 0.0]
    assert metrics["reward_timeouts"] == 1 and metrics["reward_failures"] == 0


def _pid(actor) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def _kill_soon(pid: int, delay_s: float) -> threading.Timer:
    timer = threading.Timer(delay_s, os.kill, (pid, signal.SIGKILL))
    timer.start()
    return timer


@pytest.mark.parametrize("roles", ["hf", "vllm"], indirect=True)
def test_a_rollout_worker_killed_mid_call_is_restarted_and_the_call_retried(roles, assets, tokenizer):
    roles, config = roles
    records = load_prompts(assets.train, tokenizer, 512)[:24]
    # move the policy off the base weights, which is what a restarted worker loads first
    stage = StageConfig(name="gft", algorithm="gft", lr=1e-2, prompts_per_step=6)
    roles.start_stage(str(assets.base_model), stage.lr, stage.weight_decay, stage.max_grad_norm)
    train_step(roles, stage, records[:6], config, seed=1)
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=128)  # a call of a second or more
    started = time.perf_counter()
    expected, _ = roles.rollout(records, params, seed=11)
    # early in the call: under a changing load the same call can run several times faster
    kill_after = (time.perf_counter() - started) / 10

    worker, restarts = roles.rollouts[0], roles.restarts
    pid = _pid(worker)
    started = time.perf_counter()
    killer = _kill_soon(pid, kill_after)
    got, _ = roles.rollout(records, params, seed=11)
    killer.join()
    assert time.perf_counter() - started > kill_after and roles.restarts == restarts + 1
    assert _pid(worker) != pid
    # the same rows as without the kill: sampled once, by the current policy, none lost
    assert got.equals(expected)


def test_a_rollout_worker_lost_in_a_weight_group_is_restarted_into_a_new_one(roles, assets, tokenizer, monkeypatch):
    """Weights broadcast in a weight group: a worker killed before a sync fails everyone's part of
    it; it is restarted, the group made anew and the sync sent again. One killed while it samples
    is restarted into a new group and given the weights before the call is retried. Either way
    the rows are those of the same call without a kill."""
    roles, config = roles
    monkeypatch.setattr(roles, "sync_plan", ray.get(roles.learner.weight_plan.remote(1 << 16)))
    roles._form_weight_group()
    records = load_prompts(assets.train, tokenizer, 512)[:24]
    stage = StageConfig(name="gft", algorithm="gft", lr=1e-2, prompts_per_step=6)
    roles.start_stage(str(assets.base_model), stage.lr, stage.weight_decay, stage.max_grad_norm)
    train_step(roles, stage, records[:6], config, seed=1)  # off the base weights a restarted worker loads
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=128)
    started = time.perf_counter()
    expected, _ = roles.rollout(records, params, seed=11)
    kill_after = (time.perf_counter() - started) / 10

    worker, restarts = roles.rollouts[0], roles.restarts
    os.kill(_pid(worker), signal.SIGKILL)
    roles.stale = set(range(len(roles.rollouts)))  # the same weights sent again, to a group one short
    got, metrics = roles.rollout(records, params, seed=11)
    assert roles.restarts == restarts + 1 and metrics["weight_load_bytes"] == roles.sync_plan.nbytes * 2
    assert got.equals(expected)

    killer = _kill_soon(_pid(worker), kill_after)
    got, _ = roles.rollout(records, params, seed=11)
    killer.join()
    assert roles.restarts == restarts + 2
    assert got.equals(expected)


def test_a_teacher_killed_mid_scoring_is_restarted_and_the_rows_scored_once(roles, assets, tokenizer, tmp_path):
    from pipeline.core.batch import make_batch
    from pipeline.core.errors import RoleFailed
    from workers.teacher import TeacherWorker

    roles, _ = roles
    reward = tmp_path / "slow_reward.py"
    reward.write_text("import time\n\ndef compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
                      "    time.sleep(0.5)\n    return float(solution_str == ground_truth)\n")
    texts = ["3", "4", "3", "5"]
    batch = make_batch(group_id=["g"] * 4, source=["self"] * 4, prompt_ids=[[1]] * 4,
                       response_ids=[tokenizer.encode(t, add_special_tokens=False) for t in texts],
                       ground_truth=["3"] * 4, data_source=["d"] * 4)
    own_teacher = roles.teacher
    try:
        for max_restarts in (1, 0):
            roles.teacher = ray.remote(num_cpus=0, max_restarts=max_restarts, max_task_retries=0)(
                TeacherWorker).remote(str(assets.base_model), str(reward))
            restarts = roles.restarts
            killer = _kill_soon(_pid(roles.teacher), 0.7)  # while the 2 s of scoring run
            if max_restarts:
                scored, metrics = roles.score(batch)
                assert scored.column("reward").to_pylist() == [1.0, 0.0, 1.0, 0.0]
                assert metrics["reward_failures"] == 0 and roles.restarts == restarts + 1
            else:  # no restart allowed: a clear failure, not a hang
                with pytest.raises(RoleFailed, match="did not restart it"):
                    roles.score(batch)
            killer.join()
    finally:
        roles.teacher = own_teacher


def test_a_learner_killed_ends_the_call_with_rays_account_of_its_end(roles, assets, monkeypatch):
    """A learner cannot be rebuilt: its process lost fails the call as RoleFailed, which names how
    it ended (Ray's exit detail, not only the lost connection Ray reports first), here with no
    node lost and every other role answering."""
    from pipeline.core.errors import RoleFailed
    from workers.learner import Learner

    roles, _ = roles
    learner = ray.remote(num_cpus=0)(Learner).remote(str(assets.base_model), num_threads=1)
    monkeypatch.setattr(roles, "learners", [learner])
    os.kill(_pid(learner), signal.SIGKILL)
    with pytest.raises(RoleFailed, match=r"^a learner's process died: ") as failed:
        roles.set_lr(1e-3)
    assert "Worker exit type" in str(failed.value) and "was lost" not in str(failed.value)
