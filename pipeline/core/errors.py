"""The errors a run ends with, each light to import. A user's mistake (``ConfigError``,
``DataError``, and ``pipeline.rewards.guard.RewardFunctionError``) is told as a message that
names the key, or the file, row and field; the CLI maps them to exit code 2. The others end a
run without a user's mistake: the CLI maps them to exit code 3, and a stop on a signal to 128 + its
number (143 for SIGTERM, 130 for SIGINT), as a shell reports a process that signal ended."""


class ConfigError(ValueError):
    """A recipe or override a user has to fix; the message says where and how."""


class DataError(ValueError):
    """A dataset problem a user has to fix; the message names file, row and field."""


class TrainingStopped(RuntimeError):
    """The run stopped itself (updates skipped too many times in a row); the message says why and
    where its last resume point is."""


class RoleFailed(RuntimeError):
    """A role's process died for good: the learner (its state cannot be rebuilt), or a rollout or
    teacher actor that died more often than ``ray.max_actor_restarts``."""


class PolicyNotFinite(RuntimeError):
    """A rollout sampled from next-token probabilities that are not finite: finite weights grown
    so large that the logits overflow. A rollout worker raises it; the driver turns it into a
    :class:`TrainingStopped` that names the stage and step."""


class StopRequested(TrainingStopped):
    """The run stopped on a signal (SIGTERM, or SIGINT from Ctrl-C): at a step boundary, with a
    resume point of the last step done, or at once on a second one. ``signum``: which."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class DiskFull(TrainingStopped):
    """A write into the run folder found no space left; it was abandoned whole, and the message
    says how much a checkpoint needs."""
