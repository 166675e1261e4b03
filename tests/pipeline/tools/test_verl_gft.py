"""The GFT loss as verl's policy loss: registered by importing ``pipeline.tools.verl_gft``."""

import math

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


def _actor_config(loss_agg_mode: str = "token-mean", **policy_loss):
    """The actor config as verl's trainer builds it from its YAML (``omega_conf_to_dataclass``),
    with the policy loss's ``_target_`` overridden on the command line."""
    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass

    return omega_conf_to_dataclass(OmegaConf.create({
        "_target_": "verl.workers.config.FSDPActorConfig", "strategy": "fsdp", "rollout_n": 1,
        "ppo_micro_batch_size_per_gpu": 1, "loss_agg_mode": loss_agg_mode, "entropy_coeff": 0.0,
        "policy_loss": {"_target_": "pipeline.tools.verl_gft.GftPolicyLossConfig", **policy_loss},
    }))


def test_tau_comes_from_verls_own_actor_config(monkeypatch):
    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import PolicyLossConfig

    from pipeline.tools.verl_gft import GftPolicyLossConfig, gft_tau

    # verl's own class is closed to an extra key: why the run names ours as the _target_
    with pytest.raises(Exception, match="tau"):
        omega_conf_to_dataclass(OmegaConf.create({"loss_mode": "gft", "tau": 0.3}), PolicyLossConfig)
    monkeypatch.setenv("GFT_TAU", "0.7")
    config = _actor_config(tau=0.3)
    assert isinstance(config.policy_loss, GftPolicyLossConfig) and config.policy_loss.loss_mode == "gft"
    assert gft_tau(config) == 0.3  # the config's, not the environment's
    assert gft_tau(_actor_config(loss_mode="gft")) == 0.1  # the paper's default
    with pytest.raises(Exception, match=r"policy_loss.tau must be a number > 0, got -1"):
        _actor_config(tau=-1)


# one micro-batch of three responses (prompts of 2 tokens), the probabilities of their tokens
PROBS = [[0.5, 0.2, 0.9, 0.05], [0.25, 0.6], [0.1, 0.4, 0.8]]
ADVANTAGES = [1.0, -0.5, 2.0]
TAU, PROMPT, WIDTH = 0.3, 2, 4


def _by_hand(mode: str) -> float:
    """-A * c * log p per token, c = p where p <= tau else 1, aggregated as verl's mode says."""
    per_token = [[-a * (p if p <= TAU else 1.0) * math.log(p) for p in probs] for probs, a in zip(PROBS, ADVANTAGES)]
    sums = [sum(tokens) for tokens in per_token]
    count = sum(map(len, per_token))
    return {"token-mean": sum(sums) / count, "token-sum": sum(sums),
            "seq-mean-token-sum": sum(sums) / len(sums),
            "seq-mean-token-mean": sum(s / len(t) for s, t in zip(sums, per_token)) / len(sums),
            "seq-mean-token-sum-norm": sum(sums) / len(sums) / WIDTH}[mode]


@pytest.mark.parametrize("mode", ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
                                  "seq-mean-token-sum-norm"])
def test_the_loss_through_the_call_verls_actor_makes(mode):
    """verl's actor computes its policy loss in ``verl.workers.utils.losses.ppo_loss``: the
    model's log-probs over the packed sequences, cut to the responses there, a boolean response
    mask, the loss looked up by ``policy_loss.loss_mode``, aggregated by ``loss_agg_mode``."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.losses import ppo_loss

    lengths = torch.tensor([len(p) for p in PROBS])
    attention = torch.cat([torch.ones(3, PROMPT, dtype=torch.long),
                           (torch.arange(WIDTH)[None] < lengths[:, None]).long()], dim=1)
    # packed: each sequence's positions, the log-prob of its next token at each; only those that
    # predict a response token count, the rest (0.5 here) must not
    packed = []
    for probs in PROBS:
        packed += [0.5] * (PROMPT - 1) + probs + [0.5]
    log_probs = torch.tensor(packed, dtype=torch.float64).log().requires_grad_()
    data = tu.get_tensordict({
        "prompts": torch.ones(3, PROMPT, dtype=torch.long), "responses": torch.ones(3, WIDTH, dtype=torch.long),
        "attention_mask": attention, "response_mask": attention[:, PROMPT:],
        "old_log_probs": torch.zeros(3, WIDTH, dtype=torch.float64),
        "advantages": torch.tensor(ADVANTAGES, dtype=torch.float64)[:, None].expand(3, WIDTH).contiguous(),
    }, {"dp_size": 1, "batch_num_tokens": None, "global_batch_size": None})
    loss, metrics = ppo_loss(_actor_config(mode, tau=TAU), {"log_probs": log_probs}, data)
    assert loss.item() == pytest.approx(_by_hand(mode), rel=1e-12)
    coefficients = [p if p <= TAU else 1.0 for probs in PROBS for p in probs]
    assert metrics["actor/gft_mean_coefficient"].aggregate() == pytest.approx(sum(coefficients) / len(coefficients))
    loss.backward()
    counted = [0] * (PROMPT - 1) + [1] * WIDTH + [0]
    response_positions = torch.tensor([c for probs in PROBS for c in counted[: PROMPT - 1 + len(probs)] + [0]],
                                      dtype=torch.bool)
    assert (log_probs.grad[~response_positions] == 0).all() and (log_probs.grad[response_positions] != 0).all()


def _rollout_batch(tokenizer, length: int = 12):
    """verl's rollout batch right after generation: two prompts (uids) of two sampled rows each,
    prompts left-padded, responses right-padded; candidates in either layout in extra_info."""
    import numpy as np
    from verl import DataProto

    prompts = [tokenizer.encode("Compute 1+2.", add_special_tokens=False),
               tokenizer.encode("Compute 20+5.", add_special_tokens=False)]
    extra = [{"answer": "1+2=3 \\boxed{3}", "model_answer": ["\\boxed{3}", "\\boxed{4}", "\\boxed{3}"]},
             {"expert_responses": ["20+5=25 \\boxed{25}"], "teacher_responses": ["\\boxed{25}"]}]
    sampled = [[5, 6, 7], [8, 9, 10, 11, 12], [13, 14], [15, 16, 17, 18]]
    width = max(map(len, prompts))
    rows = {"prompts": [], "responses": [], "attention_mask": [], "position_ids": []}
    for index, response in enumerate(sampled):
        prompt = prompts[index // 2]
        pad = width - len(prompt)
        rows["prompts"].append([tokenizer.pad_token_id] * pad + prompt)
        rows["responses"].append(response + [tokenizer.pad_token_id] * (length - len(response)))
        mask = [0] * pad + [1] * len(prompt) + [1] * len(response) + [0] * (length - len(response))
        rows["attention_mask"].append(mask)
        rows["position_ids"].append([0] * pad + list(range(len(prompt) + length)))
    tensors = {key: torch.tensor(value) for key, value in rows.items()}
    tensors["input_ids"] = torch.cat([tensors["prompts"], tensors["responses"]], dim=1)
    non_tensors = {"uid": np.array(["p0", "p0", "p1", "p1"], dtype=object),
                   "extra_info": np.array([extra[0], extra[0], extra[1], extra[1]], dtype=object)}
    return DataProto.from_dict(tensors, non_tensors)


def test_the_group_builder_adds_each_prompts_expert_and_teacher_rows_under_its_uid(tokenizer):
    from pipeline.tools.verl_gft import with_off_policy_rows

    batch = _rollout_batch(tokenizer)
    width, length = batch.batch["prompts"].shape[1], batch.batch["responses"].shape[1]
    grouped = with_off_policy_rows(batch, expert=1, teacher=2, tokenizer=tokenizer)
    assert list(grouped.non_tensor_batch["uid"]) == ["p0"] * 2 + ["p1"] * 2 + ["p0"] * 3 + ["p1"] * 2
    # p0 has three teacher answers, of which two are asked; p1 has one
    assert list(grouped.non_tensor_batch["source"]) == ["self"] * 4 + ["expert", "teacher", "teacher", "expert",
                                                                         "teacher"]
    eos = [tokenizer.eos_token_id]
    texts = ["1+2=3 \\boxed{3}", "\\boxed{3}", "\\boxed{4}", "20+5=25 \\boxed{25}", "\\boxed{25}"]
    whole = []  # whether each candidate fit, ending in EOS, or was cut
    for row, text in zip(range(4, 9), texts):
        ids = (tokenizer.encode(text, add_special_tokens=False) + eos)[:length]  # cut as verl cuts its samples
        whole.append(ids[-1] == eos[0])
        mask = grouped.batch["attention_mask"][row, width:]  # verl's response mask, as it computes it
        assert grouped.batch["responses"][row][: int(mask.sum())].tolist() == ids and int(mask.sum()) == len(ids)
        assert torch.equal(grouped.batch["input_ids"][row],
                           torch.cat([grouped.batch["prompts"][row], grouped.batch["responses"][row]]))
        # positions run on from the prompt's last, as verl numbers a sampled response's
        positions = grouped.batch["position_ids"][row]
        last = int(positions[width - 1])
        assert positions[width:].tolist() == list(range(last + 1, last + 1 + length))
    assert any(whole) and not all(whole)  # both cases were seen
    assert torch.equal(grouped.batch["prompts"][4], batch.batch["prompts"][0])
    with pytest.raises(ValueError, match=r"right after generation; the batch already holds \['old_log_probs'\]"):
        batch.batch["old_log_probs"] = torch.zeros(4, 12)
        with_off_policy_rows(batch, expert=1, teacher=2, tokenizer=tokenizer)


def test_verls_grpo_advantage_and_the_gft_loss_on_the_group_are_this_projects_step(tokenizer):
    """The same rows, rewards and log-probs through verl (the builder, verl's GRPO advantage by
    uid, the registered loss) and through this project's step (group advantages, the GFT loss)."""
    import numpy as np

    from pipeline.core.batch import make_batch, with_column
    from pipeline.core.losses import gft_loss
    from pipeline.driver.stages import step_advantages
    from pipeline.recipe.config import StageConfig
    from pipeline.tools.verl_gft import with_off_policy_rows

    batch = _rollout_batch(tokenizer)
    grouped = with_off_policy_rows(batch, expert=1, teacher=2, tokenizer=tokenizer)
    rewards = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    mask = grouped.batch["attention_mask"][:, batch.batch["prompts"].shape[1]:].bool()  # verl's response mask
    lengths = mask.sum(1)
    token_rewards = torch.zeros(mask.shape, dtype=torch.float64)
    token_rewards[torch.arange(len(rewards)), lengths - 1] = rewards  # verl scores a row's last token
    verl_advantages, _ = core_algos.compute_grpo_outcome_advantage(
        token_rewards, mask.to(torch.float64), np.asarray(grouped.non_tensor_batch["uid"], dtype=object))

    ours = make_batch(group_id=list(grouped.non_tensor_batch["uid"]), source=list(grouped.non_tensor_batch["source"]),
                      prompt_ids=[[1]] * len(rewards),
                      response_ids=[r[: int(n)].tolist() for r, n in zip(grouped.batch["responses"], lengths)],
                      ground_truth=["3"] * len(rewards))
    our_advantages = step_advantages(with_column(ours, "reward", rewards.numpy()), StageConfig(name="g", algorithm="gft"))
    np.testing.assert_allclose(verl_advantages[:, 0].numpy(), our_advantages, rtol=1e-6)

    torch.manual_seed(3)
    log_probs = torch.log(torch.rand(mask.shape, dtype=torch.float64) * 0.99 + 0.005)
    verl_loss, _ = core_algos.get_policy_loss_fn("gft")(log_probs, log_probs, verl_advantages, mask, "token-mean",
                                                        _actor_config(tau=0.1))
    advantages = torch.as_tensor(our_advantages, dtype=torch.float64)[:, None].expand(mask.shape)
    our_loss, _ = gft_loss(log_probs, advantages, mask.to(torch.float64), tau=0.1)
    assert verl_loss.item() == pytest.approx(our_loss.item(), rel=1e-6)  # our step keeps advantages in float32
