"""What each training algorithm is, said once: the sources its groups may hold, how its rewards
become advantages, which log-probs its loss reads, and the loss itself (a pure function of
``pipeline.core.losses`` with the stage's options bound). Config validation, the stage step and
the learner's objective all read :data:`ALGORITHMS`.

An objective is pickled to the learner's process: this module imports the losses and nothing of
the recipe (``StageConfig`` is a type annotation only), so unpickling one stays light.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pipeline.core.batch import SOURCES
from pipeline.core.losses import (
    chord_loss,
    chord_mu,
    dcr_diagnostics,
    dft_loss,
    gft_loss,
    grpo_loss,
    sft_loss,
)

if TYPE_CHECKING:
    from pipeline.recipe.config import StageConfig

@dataclass(frozen=True)
class Algorithm:
    name: str
    sources: tuple[str, ...]  # the group members it may train on
    min_group: int  # rows per prompt's group, at the least
    # rewards normalised within each prompt's group (GFT, GRPO); otherwise every row weighs 1
    group_advantages: bool
    # its loss reads the policy's log-probs from before the batch's first update (a ratio): with
    # several mini-batches they are frozen at the cost of a forward; on stale rows it reads the
    # rollout's (behaviour) log-probs as well
    old_log_probs: bool
    # its loss has a KL penalty to the stage's start policy, weighted by the stage's ``kl_coef``
    kl_penalty: bool
    # the objective of a step of the stage (``(stage, step)``, step 1-based):
    # ``(log_probs [N], tokens: workers.learner.TokenBatch) -> (loss, metrics)``
    objective: Callable[[StageConfig, int], Callable]
    # the groups rewards are normalised in, where the algorithm fixes them (None: the stage's
    # ``advantage_groups``): CHORD's GRPO term compares a prompt's own samples only
    advantage_groups: str | None = None

    def needs_reference(self, stage: StageConfig) -> bool:
        """Whether every step needs the start policy's log-probs (a forward of it)."""
        return self.kl_penalty and stage.kl_coef > 0


def _gft(log_probs, tokens, tau, dcr_sources):
    rectifiable = None  # the paper: every token
    if set(dcr_sources) != set(SOURCES):
        rectifiable = torch.isin(tokens.sources, torch.tensor([SOURCES.index(s) for s in dcr_sources],
                                                              dtype=tokens.sources.dtype, device=tokens.sources.device))
    loss, metrics = gft_loss(log_probs, tokens.advantages, tokens.response_mask, tau, rectifiable)
    diagnostics = dcr_diagnostics(log_probs, tokens.advantages, tokens.response_mask, tokens.sources, SOURCES, tau,
                                  rectifiable)
    return loss, {**metrics, **diagnostics}


def _sft(log_probs, tokens):
    return sft_loss(log_probs, tokens.response_mask)


def _dft(log_probs, tokens):
    return dft_loss(log_probs, tokens.response_mask)


def _grpo(log_probs, tokens, clip_ratio, kl_coef, behaviour_weight_cap):
    return grpo_loss(log_probs, tokens.old_log_probs, tokens.advantages, tokens.response_mask, clip_ratio, kl_coef,
                     tokens.ref_log_probs, tokens.behaviour_log_probs, behaviour_weight_cap)


def _chord(log_probs, tokens, mu, phi, clip_ratio, kl_coef, behaviour_weight_cap):
    expert = tokens.sources == SOURCES.index("expert")
    return chord_loss(log_probs, tokens.old_log_probs, tokens.advantages, tokens.response_mask, expert, mu, phi,
                      clip_ratio, kl_coef, tokens.ref_log_probs, tokens.behaviour_log_probs, behaviour_weight_cap)


def _chord_objective(stage: StageConfig, step: int) -> Callable:
    mu = chord_mu(step, stage.steps, stage.mu_peak, stage.mu_valley, stage.mu_warmup_steps, stage.mu_decay_steps)
    return functools.partial(_chord, mu=mu, phi=stage.sft_token_weight == "phi", clip_ratio=stage.clip_ratio,
                             kl_coef=stage.kl_coef, behaviour_weight_cap=stage.behaviour_weight_cap)


ALGORITHMS: dict[str, Algorithm] = {
    algorithm.name: algorithm
    for algorithm in (
        Algorithm("sft", ("expert", "teacher"), min_group=1, group_advantages=False, old_log_probs=False,
                  kl_penalty=False, objective=lambda stage, step: _sft),
        Algorithm("dft", ("expert", "teacher"), min_group=1, group_advantages=False, old_log_probs=False,
                  kl_penalty=False, objective=lambda stage, step: _dft),
        Algorithm("gft", SOURCES, min_group=1, group_advantages=True, old_log_probs=False, kl_penalty=False,
                  objective=lambda stage, step: functools.partial(
                      _gft, tau=stage.tau, dcr_sources=tuple(stage.dcr_sources))),
        Algorithm("grpo", ("self",), min_group=2, group_advantages=True, old_log_probs=True, kl_penalty=True,
                  objective=lambda stage, step: functools.partial(
                      _grpo, clip_ratio=stage.clip_ratio, kl_coef=stage.kl_coef,
                      behaviour_weight_cap=stage.behaviour_weight_cap)),
        # min_group: 1 expert row and 2 of the policy's own (GRPO compares them), checked apart
        Algorithm("chord", ("expert", "self"), min_group=3, group_advantages=True, old_log_probs=True,
                  kl_penalty=True, objective=_chord_objective, advantage_groups="prompt_and_source"),
    )
}


def objective_for(stage: StageConfig, step: int = 1) -> Callable:
    """The learner's objective for ``step`` (1-based) of ``stage``."""
    return ALGORITHMS[stage.algorithm].objective(stage, step)


def needs_reference(stage: StageConfig) -> bool:
    """Whether the learners hold ``stage``'s start policy: for its loss's KL penalty, or to
    measure the KL every ``kl_every`` steps. Otherwise its memory stays free."""
    return ALGORITHMS[stage.algorithm].needs_reference(stage) or stage.kl_every > 0
