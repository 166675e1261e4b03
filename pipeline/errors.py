"""Errors that end a run without a user's mistake, each kept light to import (the CLI maps them
to exit code 3). Mistakes in a user's input have their own: ``ConfigError``, ``DataError``,
``RewardFunctionError``."""


class TrainingStopped(RuntimeError):
    """The run stopped itself (updates skipped too many times in a row); the message says why and
    where its last resume point is."""


class RoleFailed(RuntimeError):
    """A role's process died for good: the learner (its state cannot be rebuilt), or a rollout or
    teacher actor that died more often than ``ray.max_actor_restarts``."""
