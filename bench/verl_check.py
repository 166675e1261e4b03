"""GFT's loss inside verl's own trainer: ``python -m verl.trainer.main_ppo`` for a few steps, with
the loss registered by ``pipeline.tools.verl_gft``, on the embedded tiny model and a parquet in
the GFT authors' layout (``source``, ``extra_info.answer`` and ``extra_info.model_answer``).

verl 0.9.1's trainer needs a CUDA GPU, verl and Ray: ``scripts/gpu_check.sh`` runs this where it
finds them and says so where it does not. ``--dry-run`` builds the same inputs and puts the command
through what ``main_ppo`` does before it needs a GPU (Hydra's composition of verl's
``ppo_trainer`` config, verl's ``validate_config``, the actor config built as its workers build
it), which runs anywhere. This is GFT's loss on groups of the policy's own samples: stock verl has
no hook for the expert and teacher rows (docs/verl.md).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import ROOT
from pipeline.embedded import build_embedded_assets
from pipeline.embedded.dataset import read_rows


def authors_layout(rows: list[dict]) -> list[dict]:
    """The embedded rows as the GFT authors' files hold them: the reward keyed on ``source``, the
    expert's text in ``extra_info.answer``, the teachers' in ``extra_info.model_answer``."""
    return [{"source": row["data_source"], "data_source": row["data_source"], "prompt": row["prompt"],
             "ability": row["ability"], "reward_model": row["reward_model"],
             "extra_info": {"index": row["extra_info"]["index"], "answer": row["extra_info"]["expert_responses"][0],
                            "model_answer": row["extra_info"]["teacher_responses"]}} for row in rows]


def build_inputs(folder: Path) -> dict[str, Path]:
    """The tiny model and a train and a test parquet in the authors' layout, in ``folder``."""
    assets = build_embedded_assets(folder / "embedded", n_train=64, n_test=16, n_ood=0)
    paths = {"model": assets.base_model}
    for split, source in (("train", assets.train), ("test", assets.test)):
        paths[split] = folder / f"{split}.parquet"
        pq.write_table(pa.Table.from_pylist(authors_layout(read_rows(source))), paths[split])
    return paths


def overrides(paths: dict[str, Path], gpus: int, steps: int, output: Path) -> list[str]:
    """``main_ppo``'s command line for a GFT run of ``steps`` steps on ``gpus`` GPUs of one node."""
    return [
        "algorithm.adv_estimator=grpo",
        f"data.train_files={paths['train']}", f"data.val_files={paths['test']}",
        "data.reward_fn_key=source", "data.train_batch_size=8",
        "data.max_prompt_length=64", "data.max_response_length=48",
        f"actor_rollout_ref.model.path={paths['model']}",
        "actor_rollout_ref.model.external_lib=pipeline.tools.verl_gft",
        "actor_rollout_ref.actor.policy_loss.loss_mode=gft",
        "actor_rollout_ref.actor.policy_loss._target_=pipeline.tools.verl_gft.GftPolicyLossConfig",
        "+actor_rollout_ref.actor.policy_loss.tau=0.1",
        "actor_rollout_ref.actor.loss_agg_mode=token-mean",
        "actor_rollout_ref.actor.use_kl_loss=false", "actor_rollout_ref.actor.entropy_coeff=0",
        "actor_rollout_ref.actor.ppo_mini_batch_size=8", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.3",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        f"custom_reward_function.path={ROOT / 'pipeline' / 'rewards' / 'verifiers.py'}",
        "custom_reward_function.name=default_compute_score",
        f"trainer.n_gpus_per_node={gpus}", "trainer.nnodes=1", f"trainer.total_training_steps={steps}",
        "trainer.logger=[console]", "trainer.val_before_train=false", "trainer.test_freq=-1",
        "trainer.save_freq=-1", f"trainer.default_local_dir={output}",
    ]


def check(command: list[str]) -> str:
    """What ``main_ppo`` does with ``command`` before it needs a GPU; returns the loss's summary."""
    import verl
    from hydra import compose, initialize_config_dir
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    import pipeline.tools.verl_gft  # noqa: F401  (verl's workers import it through model.external_lib)

    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer" / "config"), version_base=None):
        config = compose(config_name="ppo_trainer", overrides=command)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    return f"{actor.policy_loss.loss_mode} loss, tau {actor.policy_loss.tau}, {actor.loss_agg_mode}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="check the command without running it")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--timeout-s", type=int, default=900)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="verl-check-"))
    paths = build_inputs(folder)
    gpus = 0 if args.dry_run else int(subprocess.run(
        ["nvidia-smi", "--list-gpus"], capture_output=True, text=True, check=True).stdout.count("GPU "))
    command = overrides(paths, max(gpus, 1), args.steps, folder / "checkpoints")
    print(f"verl check: {check(command)}; inputs in {folder}", flush=True)
    if args.dry_run:
        return 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "verl.trainer.main_ppo", *command], env=env, timeout=args.timeout_s,
                          check=False)
    print(f"verl check: main_ppo with the GFT loss, {args.steps} steps on {gpus} GPU(s): exit {done.returncode}")
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
