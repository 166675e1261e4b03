"""Ray actors: rollout, teacher/scoring and learner roles (see DESIGN §3)."""
