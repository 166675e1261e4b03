"""The vLLM rollout backend on a real vLLM engine (its CPU build here), run as the pipeline runs
it: a Ray actor started with the interpreter of ``.venv-vllm`` (``make vllm``), while this test
and the learner stay in ``.venv``."""

import copy
import ipaddress
import math
import os

import numpy as np
import psutil
import pytest
import ray
import torch

from pipeline.core.checkpoint import load_policy
from pipeline.core.data import load_prompts
from pipeline.driver.rollout_env import check_rollout_environment, rollout_runtime_env
from pipeline.recipe.config import RunConfig
from workers.rollout import RolloutWorker
from workers.sampling import EngineOptions, SamplingParams
from workers.weights import FlatWeights

pytestmark = pytest.mark.slow
SHARPEN = 2.0  # the tied embedding's scale: the first token's distribution from flat (max p 0.01) to peaked (0.3)


@pytest.fixture(scope="module")
def worker(ray_cluster, assets):
    config = RunConfig()
    config.rollout.backend = "vllm"
    check_rollout_environment(config)
    # colocated: as if it shared a GPU with a learner, where it would sleep between calls
    worker = ray.remote(num_cpus=1, runtime_env=rollout_runtime_env(config, {}))(RolloutWorker).remote(
        str(assets.base_model), "vllm", EngineOptions(sleep_when_idle=True))
    yield worker
    ray.kill(worker)


@pytest.fixture(scope="module")
def sharp_model(assets, worker):
    """The base model with peaked next-token distributions, served by the worker as version 1."""
    model, _ = load_policy(assets.base_model)
    model.model.embed_tokens.weight.data *= SHARPEN  # tied: the output layer's logits scale with it
    ray.get(worker.set_weights.remote(FlatWeights.pack(model.state_dict()), 1))
    return model.eval()


@pytest.fixture(scope="module")
def prompt(assets, tokenizer) -> list[int]:
    return load_prompts(assets.train, tokenizer, 512)[0].prompt_ids


def _next_token_probs(model, prompt: list[int], temperature: float, top_p: float) -> torch.Tensor:
    """The distribution the first response token is drawn from: the policy scaled by the
    temperature, cut to the top-p nucleus and renormalised."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1].double()
    probs = torch.softmax(logits / temperature, -1)
    ranked, order = probs.sort(descending=True)
    outside = ranked.cumsum(-1) - ranked >= top_p
    probs = torch.zeros_like(probs).scatter(-1, order, ranked.masked_fill(outside, 0.0))
    return probs / probs.sum()


def _chi_square(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """Pearson's statistic of ``counts`` against ``probs``, tokens expected fewer than 5 times
    pooled into one cell; and its degrees of freedom."""
    expected = probs * counts.sum()
    small = expected < 5
    observed = np.append(counts[~small], counts[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    keep = expected > 0
    observed, expected = observed[keep], expected[keep]
    return float(((observed - expected) ** 2 / expected).sum()), len(observed) - 1


def _chi_square_limit(df: int, z: float = 3.72) -> float:
    """The chi-square quantile a true hypothesis exceeds with probability 1e-4 (z = 3.72), by
    Wilson and Hilferty's approximation."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_the_colocated_engine_does_not_sleep_on_a_platform_without_sleep_mode(worker):
    info = ray.get(worker.describe.remote())
    assert (info["backend"], info["sleeps"]) == ("vllm", False)
    assert info["engine"].startswith("vLLM ") and info["engine"].endswith(" on cpu")
    assert info["python"].endswith(".venv-vllm/bin/python")


def test_the_engine_listens_on_loopback_only(worker):
    """As the local Ray cluster does (tests/pipeline/driver/test_safety_network.py): the engine's own
    servers (torch.distributed's store among them) must not face the network."""
    pid = ray.get(worker.__ray_call__.remote(lambda self: os.getpid()))
    listening = [c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening
    for ip in listening:
        address = ipaddress.ip_address(ip)
        assert (getattr(address, "ipv4_mapped", None) or address).is_loopback, ip


def test_sampled_tokens_follow_the_temperature_scaled_nucleus(worker, sharp_model, prompt):
    temperature, top_p = 0.7, 0.7
    params = SamplingParams(n=80, temperature=temperature, top_p=top_p, max_new_tokens=1)
    out = ray.get(worker.sample.remote([prompt] * 50, params, 0))
    tokens = np.array([ids[0] for ids in out.response_ids])
    probs = _next_token_probs(sharp_model, prompt, temperature, top_p).numpy()
    assert 20 < (probs > 0).sum() < len(probs) - 20  # a nucleus that cuts, of many tokens
    assert len(tokens) == 4000 and probs[tokens].min() > 0  # nothing outside the nucleus
    # each behaviour log-prob is that of the distribution the token was drawn from
    np.testing.assert_allclose([lp[0] for lp in out.logprobs], np.log(probs[tokens]), atol=1e-4)

    counts = np.bincount(tokens, minlength=len(probs))
    statistic, df = _chi_square(counts, probs)
    assert statistic < _chi_square_limit(df)
    # the same test tells the distribution apart from the plain policy's (temperature 1, no top-p)
    plain = _next_token_probs(sharp_model, prompt, 1.0, 1.0).numpy()
    statistic, df = _chi_square(counts, plain)
    assert statistic > _chi_square_limit(df)


def test_each_prompt_draws_on_its_own_and_a_seed_repeats_a_call(worker, sharp_model, prompt):
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=8)
    out = ray.get(worker.sample.remote([prompt] * 16, params, 5))
    rows = np.array(out.response_ids, dtype=object).reshape(16, 4)
    # sample j of two copies of one prompt: equal only by chance (one seed for every prompt made
    # every copy's samples the same)
    same = sum(rows[a, j] == rows[b, j] for a in range(16) for b in range(a) for j in range(4))
    assert same <= 2
    assert len({tuple(r) for r in out.response_ids}) >= 60
    again = ray.get(worker.sample.remote([prompt] * 16, params, 5))
    assert again.response_ids == out.response_ids and again.logprobs == out.logprobs
    other = ray.get(worker.sample.remote([prompt] * 16, params, 6))
    assert other.response_ids != out.response_ids


def test_a_weight_sync_drops_the_prompt_blocks_cached_under_the_old_weights(worker, sharp_model, tokenizer):
    """vLLM caches the keys and values of whole prompt blocks (128 tokens on CPU) across calls; a
    prompt seen before a sync must not reuse those of the old weights."""
    prompt = tokenizer.encode("Compute 1+6+9. " * 40, add_special_tokens=False)[:300]
    assert len(prompt) == 300  # two whole blocks
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=6)
    ray.get(worker.sample.remote([prompt], params, 0))  # its blocks cached under the sharpened weights
    model = copy.deepcopy(sharp_model)
    torch.manual_seed(0)
    for weight in model.parameters():
        weight.data += 0.05 * torch.randn_like(weight)
    try:
        ray.get(worker.set_weights.remote(FlatWeights.pack(model.state_dict()), 2))
        out = ray.get(worker.sample.remote([prompt], params, 1))
    finally:
        ray.get(worker.set_weights.remote(FlatWeights.pack(sharp_model.state_dict()), 1))
    for response, logprobs in zip(out.response_ids, out.logprobs):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1]
        expected = torch.log_softmax(logits.double(), -1).gather(-1, torch.tensor(response)[:, None])[:, 0]
        np.testing.assert_allclose(logprobs, expected.numpy(), atol=1e-4)
