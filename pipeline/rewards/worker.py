"""A reward worker process: ``python -m pipeline.rewards.worker REWARD_FILE|"" [EXTRACTION]``.

Reads one JSON call ``[data_source, solution_str, ground_truth, extra_info]`` per stdin line and
answers one JSON line: ``{"score": x}`` or ``{"error": "..."}``. The first line it writes says
whether the reward function loaded. ``pipeline.rewards.guard`` drives it.
"""

from __future__ import annotations

import json
import math
import os
import sys


def as_reward(value) -> float:
    """A compute_score result as a float; verl allows ``{"score": x, ...}``."""
    if isinstance(value, dict):
        value = value.get("score")
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"compute_score returned {value!r}, not a finite number")
    return float(value)


def main() -> int:
    # The protocol owns the real stdout; whatever the reward function prints goes to stderr.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def send(message: dict) -> None:
        protocol.write(json.dumps(message) + "\n")

    from pipeline.rewards import load_reward_function

    try:
        path, extraction = (sys.argv[1:] + ["", "strict"])[:2]
        compute_score = load_reward_function(path or None, extraction)
    except Exception as err:  # noqa: BLE001  (any failure of the user's file is reported, not raised)
        send({"error": f"{type(err).__name__}: {err}"})
        return 1
    send({"ready": True})
    for line in sys.stdin:
        data_source, solution_str, ground_truth, extra_info = json.loads(line)
        try:
            send({"score": as_reward(compute_score(data_source, solution_str, ground_truth, extra_info))})
        except Exception as err:  # noqa: BLE001  (a reward that raises scores 0; the guard counts it)
            send({"error": f"{type(err).__name__}: {err}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
