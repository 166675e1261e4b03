"""verl's trainer with the GFT loss, as far as it goes without a GPU: the command lines of
docs/verl.md and of bench.verl_check put through what ``main_ppo`` does before it needs one, and
the authors'-layout files bench.verl_check writes, read back by this project's own loader."""

import re
import shlex

import pytest
from hydra.errors import InstantiationException
from transformers import AutoTokenizer

from bench import verl_check
from bench.common import ROOT
from pipeline.core.data import read_prompt_file
from pipeline.embedded.task import DATA_SOURCE as EMBEDDED_SOURCE


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return verl_check.build_inputs(tmp_path_factory.mktemp("verl-check"))


def test_the_command_of_docs_verl_passes_verls_own_checks():
    text = (ROOT / "docs" / "verl.md").read_text()
    (block,) = re.findall(r"```bash\n(python -m verl\.trainer\.main_ppo .*?)```", text, re.DOTALL)
    words = shlex.split(block.replace("\\\n", " "))
    assert words[:3] == ["python", "-m", "verl.trainer.main_ppo"]
    assert verl_check.check(words[3:]) == "gft loss, tau 0.1, token-mean"


def test_verl_checks_command_passes_and_one_short_of_a_setting_verl_needs_is_refused(inputs, tmp_path):
    command = verl_check.overrides(inputs, gpus=4, steps=2, output=tmp_path / "checkpoints")
    assert verl_check.check(command) == "gft loss, tau 0.1, token-mean"
    short = [o for o in command if not o.startswith("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu")]
    with pytest.raises(InstantiationException, match="ppo_micro_batch_size"):
        verl_check.check(short)


def test_its_files_are_in_the_authors_layout_and_gft_reads_them(inputs):
    tokenizer = AutoTokenizer.from_pretrained(inputs["model"])
    prompts = read_prompt_file(inputs["train"], tokenizer, max_prompt_length=64, reward_fn_key="source")
    assert len(prompts.records) == 64 and prompts.skipped == []
    assert all(r.data_source == EMBEDDED_SOURCE and len(r.expert) == 1 and len(r.teacher) == 3 for r in prompts.records)
