"""Ray actors: rollout, teacher/scoring and learner roles (docs/design.md §3)."""
