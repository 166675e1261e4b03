"""Placement plans: bundles per learner rank, rollout workers colocated or apart."""

from pipeline.driver.placement import Seat, plan_placement
from pipeline.driver.roles import ALLOCATOR_ENV, allocator_env, local_cluster_cpus
from pipeline.recipe.config import RunConfig


def _config(learners=1, rollouts=1, colocate=True, learner_gpus=0.0, rollout_gpus=0.0) -> RunConfig:
    config = RunConfig()
    config.learner.num_workers, config.learner.num_gpus = learners, learner_gpus
    config.rollout.num_workers, config.rollout.num_gpus = rollouts, rollout_gpus
    config.ray.colocate = colocate
    return config


def test_the_cpu_default_shares_one_bundle():
    plan = plan_placement(_config())
    assert plan.bundles == [{"CPU": 2.0}]
    assert plan.learners == [Seat(0, 1.0, 0.0)] and plan.rollouts == [Seat(0, 1.0, 0.0)]
    assert plan.num_cpus == 2.0


def test_colocated_gpus_are_split_among_the_actors_of_a_bundle():
    plan = plan_placement(_config(learners=2, rollouts=3, learner_gpus=1.0, rollout_gpus=1.0))
    assert plan.bundles == [{"CPU": 3.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}]
    assert plan.learners == [Seat(0, 1.0, 1 / 3), Seat(1, 1.0, 0.5)]
    assert plan.rollouts == [Seat(0, 1.0, 1 / 3), Seat(1, 1.0, 0.5), Seat(0, 1.0, 1 / 3)]


def test_apart_every_actor_has_its_own_bundle():
    plan = plan_placement(_config(learners=4, rollouts=2, colocate=False, learner_gpus=1.0, rollout_gpus=1.0))
    assert plan.bundles == [{"CPU": 1.0, "GPU": 1.0}] * 6
    assert [s.bundle for s in plan.learners + plan.rollouts] == [0, 1, 2, 3, 4, 5]
    assert all(s.num_gpus == 1.0 for s in plan.learners + plan.rollouts)


def test_custom_resources_put_each_role_on_the_nodes_that_have_them():
    config = _config(learners=2, rollouts=1, colocate=False)
    config.learner.resources, config.rollout.resources = {"learner_node": 1.0}, {"rollout_node": 0.5}
    plan = plan_placement(config)
    assert plan.bundles == [{"CPU": 1.0, "learner_node": 1.0}] * 2 + [{"CPU": 1.0, "rollout_node": 0.5}]
    assert plan.rollouts == [Seat(2, 1.0, 0.0, {"rollout_node": 0.5})]
    config.ray.colocate = True  # a bundle shared by both roles asks for both roles' resources
    assert plan_placement(config).bundles == [{"CPU": 2.0, "learner_node": 1.0, "rollout_node": 0.5},
                                              {"CPU": 1.0, "learner_node": 1.0}]


def test_an_eval_job_places_rollout_workers_only():
    plan = plan_placement(_config(learners=2, rollouts=2), with_learners=False)
    assert plan.learners == [] and plan.bundles == [{"CPU": 1.0}] * 2


def test_a_local_cluster_asks_ray_for_whole_cores():
    """Ray refuses a node of 2.5 CPUs: what the roles ask (here 2 learners and one rollout worker
    of half a core, as the default recipe's, 2.5 on a 1-core budget) rounds up."""
    config = _config(learners=2)
    config.rollout.num_cpus, config.ray.num_cpus = 0.5, 1
    assert plan_placement(config).num_cpus + config.teacher.num_cpus == 2.5
    assert local_cluster_cpus(config) == 3
    config.ray.num_cpus = 8
    assert local_cluster_cpus(config) == 8


def test_only_a_small_model_gets_the_allocator_settings_that_keep_freed_memory(tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    for folder, size in ((small, 4 << 20), (large, 2 << 30)):  # sparse files: no disk used
        folder.mkdir()
        with (folder / "model.safetensors").open("wb") as f:
            f.truncate(size)
    assert allocator_env(str(small)) == ALLOCATOR_ENV and ALLOCATOR_ENV
    assert allocator_env(str(large)) == {}
