"""GFT in stock verl (0.9.1, no fork): importing this module registers the GFT loss in verl's
policy-loss registry as ``"gft"``, so a verl run selects it with
``actor_rollout_ref.actor.policy_loss.loss_mode=gft``; :func:`with_off_policy_rows` builds GFT's
group, adding each prompt's expert and teacher rows to verl's rollout batch (docs/verl.md).

tau belongs in verl's own actor config. verl's ``PolicyLossConfig`` is a closed dataclass (an
extra key is refused), but the trainer builds it from its ``_target_``, so a run names
:class:`GftPolicyLossConfig`, which adds ``tau``::

    actor_rollout_ref.actor.policy_loss._target_=pipeline.tools.verl_gft.GftPolicyLossConfig
    +actor_rollout_ref.actor.policy_loss.tau=0.1

A run that keeps verl's own config class gets tau from the ``GFT_TAU`` environment variable
(default 0.1), set for its workers with ``+ray_kwargs.ray_init.runtime_env.env_vars.GFT_TAU=0.1``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from verl import DataProto
from verl.trainer.ppo import core_algos
from verl.workers.config.actor import PolicyLossConfig

from pipeline.core.data import candidate_ids, candidates
from pipeline.core.losses import DEFAULT_TAU, dcr_coefficients

GFT_TAU_ENV = "GFT_TAU"


def _checked(tau: float, where: str) -> float:
    if not (isinstance(tau, int | float) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"{where} must be a number > 0, got {tau!r}")
    return float(tau)


@dataclass
class GftPolicyLossConfig(PolicyLossConfig):
    """verl's policy-loss config with GFT's DCR threshold."""

    loss_mode: str = "gft"
    tau: float = DEFAULT_TAU

    def __post_init__(self):
        _checked(self.tau, "actor_rollout_ref.actor.policy_loss.tau")


def gft_tau(config) -> float:
    """tau from the actor config's ``policy_loss.tau`` (:class:`GftPolicyLossConfig`), else from
    ``GFT_TAU``, else 0.1."""
    policy_loss = getattr(config, "policy_loss", None)
    if isinstance(policy_loss, GftPolicyLossConfig):
        return policy_loss.tau
    raw = os.environ.get(GFT_TAU_ENV, str(DEFAULT_TAU))
    try:
        tau = float(raw)
    except ValueError as err:
        raise ValueError(f"{GFT_TAU_ENV}={raw!r} is not a number") from err
    return _checked(tau, GFT_TAU_ENV)


@core_algos.register_policy_loss("gft")
def verl_gft_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config=None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GFT loss in verl's policy-loss signature: ``-A * c * log p`` per token, with DCR's
    ``c`` (``pipeline.core.losses.dcr_coefficients``), aggregated by ``loss_agg_mode`` with verl's
    global batch info, as verl's own losses are. Tensors are ``[batch, response_len]``;
    ``response_mask`` may be boolean, as verl's actor passes it. ``old_log_prob`` is unused: DCR
    weighs by the current policy's probabilities."""
    coefficients = dcr_coefficients(log_prob, gft_tau(config))
    loss_mat = -advantages * coefficients * log_prob
    if rollout_is_weights is not None:
        loss_mat = loss_mat * rollout_is_weights
    batch_info = config.global_batch_info if config is not None else {}
    loss = core_algos.agg_loss(loss_mat, response_mask, loss_agg_mode, **batch_info)
    mask = response_mask.to(coefficients.dtype)
    mean_coefficient = (coefficients * mask).sum() / mask.sum().clamp(min=1)
    return loss, {"actor/gft_mean_coefficient": mean_coefficient.item()}


# what verl's rollout batch holds right after generation; a batch with more (log-probs, values)
# has gone past the point where rows can be added
GENERATED = {"prompts", "responses", "input_ids", "attention_mask", "position_ids", "response_mask"}


def with_off_policy_rows(batch: DataProto, expert: int, teacher: int, tokenizer) -> DataProto:
    """verl's rollout batch with, for each prompt (``uid``), up to ``expert`` expert and
    ``teacher`` teacher rows appended: the candidates of its ``extra_info``, in any layout
    ``pipeline.core.data.candidates`` reads, tokenized and cut at the batch's response width as
    verl cuts its samples. Every row gets a ``source`` (``self`` for the sampled ones). Call it
    between generation and the reward, so that verl's reward and its GRPO advantage (by ``uid``)
    see the whole group, as GFT's do.

    ``batch``: ``prompts [B, P]`` (left-padded), ``responses [B, R]``, ``input_ids``,
    ``attention_mask`` and ``position_ids [B, P+R]`` (``response_mask [B, R]`` if present); the
    non-tensor fields ``uid`` and ``extra_info`` per row.
    """
    unexpected = set(batch.batch.keys()) - GENERATED
    if unexpected:
        raise ValueError(f"with_off_policy_rows runs right after generation; the batch already holds "
                         f"{sorted(unexpected)}")
    width = batch.batch["prompts"].shape[1]
    length = batch.batch["responses"].shape[1]
    first_rows, seen = [], set()  # each prompt's first row, in the batch's order
    for i, uid in enumerate(batch.non_tensor_batch["uid"]):
        if uid not in seen:
            seen.add(uid)
            first_rows.append(i)
    rows, sources = [], []
    for i in first_rows:
        found = candidates(batch.non_tensor_batch["extra_info"][i])
        for source, count, texts in (("expert", expert, found[0]), ("teacher", teacher, found[1])):
            for candidate in texts[:count]:
                rows.append((i, candidate_ids(candidate, tokenizer)[:length]))
                sources.append(source)
    batch.non_tensor_batch["source"] = np.array(["self"] * len(batch), dtype=object)
    if not rows:
        return batch
    keys = list(batch.batch.keys())  # a TensorDict iterates over its rows, not its keys
    tensors = {key: [] for key in keys}
    for i, ids in rows:
        response = torch.full((length,), tokenizer.pad_token_id, dtype=batch.batch["responses"].dtype)
        response[: len(ids)] = torch.tensor(ids)
        shown = (torch.arange(length) < len(ids)).to(batch.batch["attention_mask"].dtype)
        prompt_positions = batch.batch["position_ids"][i, :width]
        row = {
            "prompts": batch.batch["prompts"][i], "responses": response,
            "input_ids": torch.cat([batch.batch["prompts"][i], response]),
            "attention_mask": torch.cat([batch.batch["attention_mask"][i, :width], shown]),
            "position_ids": torch.cat([prompt_positions, prompt_positions[-1] + 1 + torch.arange(length)]),
            "response_mask": shown,
        }
        for key, values in tensors.items():
            values.append(row[key].to(batch.batch[key].dtype))
    non_tensors = {key: np.array([values[i] for i, _ in rows], dtype=object)
                   for key, values in batch.non_tensor_batch.items() if key != "source"}
    non_tensors["source"] = np.array(sources, dtype=object)
    added = DataProto.from_dict({key: torch.stack(values) for key, values in tensors.items()}, non_tensors,
                                meta_info=batch.meta_info)
    return DataProto.concat([batch, added])
