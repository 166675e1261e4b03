"""The GFT loss as verl's policy loss: registered by importing ``pipeline.tools.verl_gft``."""

import pytest
import torch
from verl.trainer.ppo import core_algos

import pipeline.tools.verl_gft  # noqa: F401  (the import registers "gft")
from pipeline.core.losses import gft_loss


def test_gft_is_registered_in_verls_policy_loss_registry(monkeypatch):
    fn = core_algos.get_policy_loss_fn("gft")
    torch.manual_seed(2)
    log_probs = torch.log(torch.rand(2, 4, dtype=torch.float64))
    advantages = torch.randn(2, 1, dtype=torch.float64).expand(2, 4)
    mask = torch.ones(2, 4, dtype=torch.float64)
    for tau in (0.1, 0.3):
        monkeypatch.setenv("GFT_TAU", str(tau))
        verl_value, _ = fn(log_probs, log_probs, advantages, mask, "token-mean", None)
        ours, _ = gft_loss(log_probs, advantages, mask, tau=tau)
        assert verl_value.item() == pytest.approx(ours.item(), rel=1e-12)
    monkeypatch.setenv("GFT_TAU", "-1")
    with pytest.raises(ValueError, match="GFT_TAU"):
        fn(log_probs, log_probs, advantages, mask, "token-mean", None)
