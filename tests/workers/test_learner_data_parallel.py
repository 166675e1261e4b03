"""Data-parallel learners: two Ray actors joined by torch.distributed (gloo), each with a whole
replica or each with half of the model (FSDP), take the same step as one learner on the same
batch, and write the same checkpoint."""

import sys
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from ray import cloudpickle
from safetensors import safe_open
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

from pipeline.core.batch import make_batch, with_column
from pipeline.core.data import load_prompts
from pipeline.core.resume import OPTIMIZER_DIR, Progress
from pipeline.recipe.algorithms import objective_for
from pipeline.recipe.config import StageConfig
from workers.learner import Learner, UpdateSettings
from workers.rollout import RolloutWorker
from workers.weights import FlatWeights, SharedWeights

pytestmark = pytest.mark.slow  # actors on the session's Ray cluster


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # for __ray_call__ of a test function


def _batch(assets, tokenizer):
    """Expert and teacher rows of 6 prompts with mixed-sign advantages. At 80 tokens per
    micro-batch they make 11 micro-batches (5 and 6 in two mini-batches), so the ranks' shares
    are unequal (6 and 5)."""
    records = load_prompts(assets.train, tokenizer, 512)[:6]
    rows = [(r, ids, source) for r in records for source, ids in (("expert", r.expert[0]), ("teacher", r.teacher[0]))]
    batch = make_batch(group_id=[r.uid for r, _, _ in rows], source=[s for _, _, s in rows],
                       prompt_ids=[r.prompt_ids for r, _, _ in rows], response_ids=[ids for _, ids, _ in rows],
                       ground_truth=[r.ground_truth for r, _, _ in rows])
    return with_column(batch, "advantage", np.linspace(-1.0, 1.0, batch.num_rows).astype(np.float32))


def _parameters_held(learner) -> tuple[int, int]:
    """Parameter elements of the policy and of the KL reference in this process's memory: a
    shard's, when sharded."""
    return tuple(sum(getattr(p, "to_local", lambda p=p: p)().numel() for p in model.parameters())
                 for model in (learner.model, learner.reference))


@pytest.mark.parametrize("shard", [False, True], ids=["replicas", "fsdp-and-gradient-checkpointing"])
@pytest.mark.parametrize("updates_per_batch", [1, 2])
def test_two_learners_take_the_same_step_as_one(cluster, assets, tokenizer, tmp_path, updates_per_batch, shard):
    """Sharded, the two also recompute their activations (gradient checkpointing under FSDP),
    which the single learner does not."""
    batch = _batch(assets, tokenizer)
    stage = StageConfig(name="gft", algorithm="gft", lr=1e-3)
    base = str(assets.base_model)

    single = Learner(base, num_threads=1)
    single.start_stage(base, stage.lr)
    single_keys = set(safe_open(Path(single.save(str(tmp_path / "single")), "model.safetensors"), "pt").keys())
    single_size = _parameters_held(single)
    settings = UpdateSettings(objective_for(stage), updates_per_batch, micro_batch_tokens=80)
    expected = single.update(batch, settings)

    learners = [ray.remote(num_cpus=1)(Learner).remote(base, num_threads=1, gradient_checkpointing=shard)
                for _ in range(2)]
    address, port = ray.get(learners[0].rendezvous.remote())
    ray.get([learner.join_group.remote(rank, 2, address, port, shard) for rank, learner in enumerate(learners)])
    ray.get([learner.start_stage.remote(base, stage.lr) for learner in learners])
    held = ray.get([learner.__ray_call__.remote(_parameters_held) for learner in learners])
    assert held == [tuple(n / 2 for n in single_size)] * 2 if shard else [single_size] * 2
    results = ray.get([learner.update.remote(batch, settings) for learner in learners])

    for metrics in results:  # every rank reports the global figures
        for key in ("loss", "grad_norm", "entropy", "kl_to_start"):
            assert metrics[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
    reference = single.state_dict()
    weights, nothing = ray.get([learner.state_dict.remote() for learner in learners])
    assert nothing == {} and set(weights) == set(reference)
    assert max(float((reference[k] - weights[k]).abs().max()) for k in reference) < 1e-5
    # the step moved the weights well beyond that tolerance, so the comparison has teeth
    start = Learner(base).state_dict()
    assert max(float((reference[k] - start[k]).abs().max()) for k in start) > 1e-4

    folder, _ = ray.get([learner.save.remote(str(tmp_path / "ckpt")) for learner in learners])
    saved = Learner(folder).state_dict()  # a plain Hugging Face folder, loaded by one process
    assert set(safe_open(Path(folder) / "model.safetensors", "pt").keys()) == single_keys  # tied weights once
    assert max(float((reference[k] - saved[k]).abs().max()) for k in reference) < 1e-5
    for learner in learners:
        ray.kill(learner)



def _sharded_pair(model_path: str) -> list:
    learners = [ray.remote(num_cpus=1)(Learner).remote(model_path, num_threads=1) for _ in range(2)]
    address, port = ray.get(learners[0].rendezvous.remote())
    ray.get([learner.join_group.remote(rank, 2, address, port, True) for rank, learner in enumerate(learners)])
    return learners


def _on_both(learners, call):
    """``call(learner)`` on every rank at once (sharded ranks gather together); rank 0's answer."""
    return ray.get([call(learner) for learner in learners])[0]


def test_sharded_learners_resume_from_a_point_exactly(cluster, assets, tokenizer, tmp_path):
    """Each rank writes its own shard of AdamW's state, no rank gathering it whole; a new pair of
    sharded learners reads them back and takes the next step exactly as the first pair did."""
    batch, base = _batch(assets, tokenizer), str(assets.base_model)
    settings = UpdateSettings(objective_for(StageConfig(name="gft", algorithm="gft")), micro_batch_tokens=80)
    first = _sharded_pair(base)
    _on_both(first, lambda rank: rank.start_stage.remote(base, 1e-3))
    _on_both(first, lambda rank: rank.update.remote(batch, settings))
    progress = Progress(stage_index=0, step=1, global_step=1, policy_version=1)
    folder = _on_both(first, lambda rank: rank.save_resume_point.remote(str(tmp_path), progress))
    shards = {f.name: f.stat().st_size for f in (Path(folder) / OPTIMIZER_DIR).glob("*.distcp")}
    assert len(shards) == 2 and max(shards.values()) < 0.6 * sum(shards.values()), shards
    expected = _on_both(first, lambda rank: rank.update.remote(batch, settings))
    expected_weights = _on_both(first, lambda rank: rank.state_dict.remote())
    for learner in first:
        ray.kill(learner)

    second = _sharded_pair(base)
    _on_both(second, lambda rank: rank.load.remote(folder, 1))
    _on_both(second, lambda rank: rank.start_stage.remote(base, 1e-3))
    _on_both(second, lambda rank: rank.restore.remote(folder))
    again = _on_both(second, lambda rank: rank.update.remote(batch, settings))
    for key in ("loss", "grad_norm", "kl_to_start", "policy_version"):
        assert again[key] == expected[key], key
    weights = _on_both(second, lambda rank: rank.state_dict.remote())
    assert all(torch.equal(expected_weights[k], weights[k]) for k in expected_weights)
    for learner in second:
        ray.kill(learner)


def _whole_optimizer_state(learner) -> dict[str, dict[str, torch.Tensor]]:
    """AdamW's state by parameter name, gathered whole (a test's view; the learner never does)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(learner.model, learner.optimizer, options=options).get("state", {})  # {} off rank 0


def _assert_equal_states(expected, actual):
    assert expected.keys() == actual.keys()
    for name, state in expected.items():
        assert state.keys() == actual[name].keys()
        assert all(torch.equal(value, actual[name][key]) for key, value in state.items()), name


def _learners(model_path: str, count: int) -> list:
    return _sharded_pair(model_path) if count == 2 else [ray.remote(num_cpus=1)(Learner).remote(model_path, num_threads=1)]


@pytest.mark.parametrize("saved_by", [2, 1], ids=["two-resume-on-one", "one-resumes-on-two"])
def test_a_point_resumes_on_another_number_of_learners(cluster, assets, tokenizer, tmp_path, saved_by):
    """A point saved by 2 sharded learners resumes on 1, and one saved by 1 on 2 sharded: the
    optimizer state read back is bitwise the one saved, and the next step reaches the weights the
    savers reach (to float tolerance: 2 ranks sum a step's gradients in another order than 1)."""
    batch, base = _batch(assets, tokenizer), str(assets.base_model)
    settings = UpdateSettings(objective_for(StageConfig(name="gft", algorithm="gft")), micro_batch_tokens=80,
                              with_reference=False)
    progress = Progress(stage_index=0, step=1, global_step=1, policy_version=1)
    saver = _learners(base, saved_by)
    _on_both(saver, lambda rank: rank.start_stage.remote(None, 1e-3))
    _on_both(saver, lambda rank: rank.update.remote(batch, settings))
    folder = _on_both(saver, lambda rank: rank.save_resume_point.remote(str(tmp_path), progress))
    saved_state = _on_both(saver, lambda rank: rank.__ray_call__.remote(_whole_optimizer_state))
    _on_both(saver, lambda rank: rank.update.remote(batch, settings))
    expected = _on_both(saver, lambda rank: rank.state_dict.remote())
    for learner in saver:
        ray.kill(learner)

    resumer = _learners(folder, 3 - saved_by)
    _on_both(resumer, lambda rank: rank.start_stage.remote(None, 1e-3))
    _on_both(resumer, lambda rank: rank.restore.remote(folder))
    _assert_equal_states(saved_state, _on_both(resumer, lambda rank: rank.__ray_call__.remote(_whole_optimizer_state)))
    _on_both(resumer, lambda rank: rank.update.remote(batch, settings))
    weights = _on_both(resumer, lambda rank: rank.state_dict.remote())
    assert max(float((expected[k] - weights[k]).abs().max()) for k in expected) < 1e-5
    for learner in resumer:
        ray.kill(learner)


@pytest.mark.parametrize("way", ["shared-memory", "object-store", "collective"])
def test_sharded_learners_send_an_engine_exactly_their_weights(cluster, assets, tokenizer, way):
    """Two FSDP learners gather each tensor in turn as rank 0 packs it: into its shared block or
    one buffer for the object store (``workers.weights``), or into 64 KiB buckets it broadcasts
    to a weight group (``workers.weight_group``); an hf rollout worker ends holding exactly the
    learners' weights."""
    batch, base = _batch(assets, tokenizer), str(assets.base_model)
    learners = _sharded_pair(base)
    _on_both(learners, lambda rank: rank.start_stage.remote(None, 1e-3))
    _on_both(learners, lambda rank: rank.update.remote(batch, UpdateSettings(
        objective_for(StageConfig(name="gft", algorithm="gft")), micro_batch_tokens=80, with_reference=False)))
    worker = ray.remote(num_cpus=1)(RolloutWorker).remote(base, "hf", num_threads=1)
    if way == "collective":
        plan = ray.get(learners[0].weight_plan.remote(1 << 16))
        address, port = ray.get(learners[0].rendezvous.remote())
        ray.get([learners[0].join_weight_group.remote(address, port, 2),
                 worker.join_weight_group.remote(address, port, 1, 2)])
        sends = [rank.broadcast_weights.remote(plan) for rank in learners]
        assert ray.get(worker.receive_weights.remote(plan, 1)) == 1
        ray.get(sends)
    else:
        weights = _on_both(learners, lambda rank: rank.rollout_weights.remote(way == "shared-memory"))
        assert type(weights) is (SharedWeights if way == "shared-memory" else FlatWeights)
        ray.get(worker.set_weights.remote(weights, 1))

    expected = _on_both(learners, lambda rank: rank.state_dict.remote())
    held = ray.get(worker.__ray_call__.remote(lambda w: {k: v.clone() for k, v in w.engine.model.state_dict().items()}))
    assert held.keys() == expected.keys()
    assert all(torch.equal(expected[k], held[k]) for k in expected)
    base_weights = Learner(base).state_dict()  # the worker started from these: the sync changed them
    assert any(not torch.equal(base_weights[k], held[k]) for k in held)
    ray.get([rank.close.remote() for rank in learners])
    for actor in [*learners, worker]:
        ray.kill(actor)
