"""Data-parallel learners: two Ray actors joined by torch.distributed (gloo) take the same step
as one learner on the same batch."""

import numpy as np
import pytest
import ray

from pipeline.batch import make_batch, with_column
from pipeline.config import RunConfig, StageConfig
from pipeline.data import load_prompts
from pipeline.objectives import objective_for
from pipeline.roles import start_ray
from workers.learner import Learner


@pytest.fixture(scope="module")
def cluster():
    config = RunConfig()
    config.ray.num_cpus = 2
    start_ray(config)
    yield
    ray.shutdown()


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


@pytest.mark.parametrize("updates_per_batch", [1, 2])
def test_two_learners_take_the_same_step_as_one(cluster, assets, tokenizer, updates_per_batch):
    batch = _batch(assets, tokenizer)
    stage = StageConfig(name="gft", algorithm="gft", lr=1e-3)
    objective = objective_for(stage)

    single = Learner(str(assets.base_model), num_threads=1)
    single.start_stage(stage.lr)
    expected = single.update(batch, objective, updates_per_batch, micro_batch_tokens=80)

    learners = [ray.remote(num_cpus=1)(Learner).remote(str(assets.base_model), num_threads=1) for _ in range(2)]
    address, port = ray.get(learners[0].rendezvous.remote())
    ray.get([learner.join_group.remote(rank, 2, address, port) for rank, learner in enumerate(learners)])
    ray.get([learner.start_stage.remote(stage.lr) for learner in learners])
    results = ray.get([learner.update.remote(batch, objective, updates_per_batch, 80) for learner in learners])

    for metrics in results:  # every rank reports the global figures
        for key in ("loss", "grad_norm", "entropy", "kl_to_start"):
            assert metrics[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
    reference = single.state_dict()
    for weights in ray.get([learner.state_dict.remote() for learner in learners]):
        moved = max(float((reference[k] - weights[k]).abs().max()) for k in reference)
        assert moved < 1e-5
    # the step moved the weights well beyond that tolerance, so the comparison has teeth
    base = Learner(str(assets.base_model)).state_dict()
    assert max(float((reference[k] - base[k]).abs().max()) for k in base) > 1e-4
    for learner in learners:
        ray.kill(learner)
