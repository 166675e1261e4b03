"""Where the learner and rollout actors go: one Ray placement group, one bundle per learner rank
and, unless colocated, one per rollout worker (verl's resource pools, with Ray's own scheduler).

Colocated, rollout worker j shares learner bundle ``j % learners``: the bundle holds both roles'
CPUs, and its GPUs are split evenly among the actors in it, who time-share them (the learner and
the rollout never compute at once; a vLLM engine sleeps while the learner trains).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.recipe.config import RunConfig


@dataclass(frozen=True)
class Seat:
    """One actor's place: its bundle and the resources it asks for inside it (``resources``: the
    custom ones, which only the nodes started with them have)."""

    bundle: int
    num_cpus: float
    num_gpus: float
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class Placement:
    bundles: list[dict[str, float]]
    learners: list[Seat]
    rollouts: list[Seat]

    @property
    def num_cpus(self) -> float:
        return sum(b.get("CPU", 0.0) for b in self.bundles)


def _bundle(cpus: float, gpus: float, *resources: dict[str, float]) -> dict[str, float]:
    bundle = {key: value for key, value in (("CPU", cpus), ("GPU", gpus)) if value > 0}
    for asked in resources:  # colocated roles' custom resources add up, as their CPUs do
        for name, amount in asked.items():
            bundle[name] = bundle.get(name, 0.0) + amount
    return bundle


def plan_placement(config: RunConfig, with_learners: bool = True) -> Placement:
    """The bundles and each actor's seat; an eval-only job (``with_learners=False``) has rollout
    workers only."""
    learner, rollout = config.learner, config.rollout
    n_learners, n_rollouts = learner.num_workers if with_learners else 0, rollout.num_workers
    if not config.ray.colocate or not n_learners:
        bundles = [_bundle(learner.num_cpus, learner.num_gpus, learner.resources)] * n_learners
        bundles += [_bundle(rollout.num_cpus, rollout.num_gpus, rollout.resources)] * n_rollouts
        learners = [Seat(i, learner.num_cpus, learner.num_gpus, learner.resources) for i in range(n_learners)]
        rollouts = [Seat(n_learners + j, rollout.num_cpus, rollout.num_gpus, rollout.resources)
                    for j in range(n_rollouts)]
        return Placement(bundles, learners, rollouts)
    guests = [[j for j in range(n_rollouts) if j % n_learners == i] for i in range(n_learners)]
    bundles, learners, rollouts = [], [], [None] * n_rollouts
    for i, members in enumerate(guests):
        gpus = max(learner.num_gpus, rollout.num_gpus)
        share = gpus / (1 + len(members))
        bundles.append(_bundle(learner.num_cpus + rollout.num_cpus * len(members), gpus, learner.resources,
                               *[rollout.resources] * len(members)))
        learners.append(Seat(i, learner.num_cpus, share, learner.resources))
        for j in members:
            rollouts[j] = Seat(i, rollout.num_cpus, share, rollout.resources)
    return Placement(bundles, learners, rollouts)
