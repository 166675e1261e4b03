"""The learner's objective for each algorithm: a pure loss of ``pipeline.losses`` with the
stage's options bound, reading the tensors it needs from the learner's ``TokenBatch``.

Kept apart from the driver's modules so that unpickling an objective in the learner's process
imports nothing but the losses.
"""

from __future__ import annotations

import functools

import torch

from pipeline.batch import SOURCES
from pipeline.config import StageConfig
from pipeline.losses import dcr_diagnostics, dft_loss, gft_loss, grpo_loss, sft_loss


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


def _grpo(log_probs, tokens, clip_ratio, kl_coef):
    return grpo_loss(
        log_probs, tokens.old_log_probs, tokens.advantages, tokens.response_mask, clip_ratio, kl_coef, tokens.ref_log_probs
    )


def objective_for(stage: StageConfig):
    """``objective(log_probs [N], tokens: TokenBatch) -> (loss, metrics)`` for ``stage``."""
    if stage.algorithm == "gft":
        return functools.partial(_gft, tau=stage.tau, dcr_sources=tuple(stage.dcr_sources))
    if stage.algorithm == "grpo":
        return functools.partial(_grpo, clip_ratio=stage.clip_ratio, kl_coef=stage.kl_coef)
    return {"sft": _sft, "dft": _dft}[stage.algorithm]
