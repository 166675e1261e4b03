"""The `gft` command line: help texts and clean refusals of bad input."""

import signal
import subprocess
import sys

import pytest

from pipeline.cli import main


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "run" in out and "build-default" in out


def test_compare_help_names_every_pipeline(capsys):
    from pipeline.tools.compare import PIPELINES

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert all(name in out for name in PIPELINES) and "from 1000" in out


def test_the_job_commands_answer_without_importing_the_training_code():
    """``gft status`` and its like talk to the cluster only: torch, transformers and the recipe's
    code (seconds to import) stay out of their process."""
    probe = ("import sys; from pipeline.cli import main; "
             "code = main(['status', 'some-job', '--address', 'http://127.0.0.1:1']); "
             "print(code, sorted(m for m in ('torch', 'transformers', 'pipeline.recipe.config') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout.split("\n")[-2] == "2 []", done.stdout + done.stderr[-2000:]
    assert "cannot reach the Ray dashboard at http://127.0.0.1:1" in done.stderr


def test_run_help_explains_recipe_and_overrides(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "embedded default" in out and "key=value" in out and "--address" in out


def test_a_bad_override_is_refused_before_any_work_with_a_suggestion(capsys, tmp_path):
    code = main(["run", "stages.gft.tua=0.1", f"output_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "stages.gft.tua" in err and "did you mean 'tau'" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing was started or written


def test_compare_refuses_a_sweep_seed_that_is_also_an_evaluation_seed_before_any_work(capsys, tmp_path):
    code = main(["compare", "seed=999", "--seeds", "3", "--sweep-lr", "1e-4,1e-3", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "seeds [1000, 1001] are both sweep seeds (from 1000) and evaluation seeds" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fractions", ["0.25,0", "0.5,1.5", "half"])
def test_compare_refuses_a_share_of_the_prompts_outside_0_to_1_before_any_work(capsys, tmp_path, fractions):
    assert main(["compare", "--data-fractions", fractions, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--data-fractions: expected comma-separated shares in (0, 1], got {fractions!r}" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_compare_refuses_shares_of_the_prompts_for_pipelines_without_a_stage_1(capsys, tmp_path):
    assert main(["compare", "--pipelines", "grpo,chord", "--data-fractions", "0.5", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--data-fractions: none of the pipelines grpo, chord has a stage 1" in err and "sft, dft, gft" in err
    assert list(tmp_path.iterdir()) == []


def test_a_missing_recipe_is_named(capsys):
    assert main(["run", "no/such/recipe.yaml"]) == 2
    assert "no/such/recipe.yaml does not exist" in capsys.readouterr().err


def test_data_check_lists_every_bad_row_and_exits_1(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = {"data_source": "d", "prompt": [{"role": "user", "content": "1+1?"}], "reward_model": {"ground_truth": "2"}}
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([good, {**good, "reward_model": {"ground_truth": ""}}, {**good, "data_source": ""}]),
                   path)
    assert main(["data", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "3 rows" in out and "2 problems" in out
    assert "row 1: field 'reward_model.ground_truth'" in out and "row 2: field 'data_source'" in out


def test_data_convert_of_a_bad_raw_file_names_the_row_and_writes_nothing(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = tmp_path / "raw.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "q", "answer": "a\n#### 3"}, {"question": "q", "answer": "no"}]), raw)
    out = tmp_path / "out.parquet"
    assert main(["data", "convert", str(raw), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "row 1: field 'answer'" in err and "Traceback" not in err
    assert not out.exists()


def test_eval_refuses_an_unknown_benchmark_before_any_work(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--benchmarks", "math_oai,mathh"]) == 2
    assert "unknown mathh; known: math_oai" in capsys.readouterr().err


def test_score_of_a_missing_file_is_named(tmp_path, capsys):
    assert main(["score", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl: cannot read" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "verbose"), [([], False), (["--verbose"], True)])
def test_verbose_asks_the_run_to_leave_the_roles_output_on_the_terminal(monkeypatch, tmp_path, argv, verbose):
    from pipeline.driver import run as run_module

    calls = []

    def fake_run(config, **kwargs):
        calls.append(kwargs)
        return run_module.RunResult(tmp_path)

    monkeypatch.setattr(run_module, "run", fake_run)
    assert main(["run", *argv, f"output_dir={tmp_path}"]) == 0
    assert calls == [{"verbose": verbose}]


def test_a_second_ctrl_c_while_a_stop_ends_the_run_reports_that_stop(monkeypatch, tmp_path, capsys):
    """Ctrl-C twice, the second landing in the stop's own clean-up (the roles closing, wandb
    finishing): the run still says where it stopped and how to go on, not a bare "interrupted"."""
    from pipeline.core.errors import StopRequested
    from pipeline.driver import run as run_module

    def stopped_then_interrupted(config, **kwargs):
        try:
            raise StopRequested("SIGINT: stopped before step 5 of stage gft; Continue with: gft run --resume RUN",
                                signal.SIGINT)
        finally:
            raise KeyboardInterrupt  # as _StopSignal's handler raises it on the second signal

    monkeypatch.setattr(run_module, "run", stopped_then_interrupted)
    assert main(["run", f"output_dir={tmp_path}"]) == 128 + signal.SIGINT
    assert capsys.readouterr().err == "gft: stopped: SIGINT: stopped before step 5 of stage gft; Continue with: " \
                                      "gft run --resume RUN\n"

    def interrupted_starting_up(config, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "run", interrupted_starting_up)
    assert main(["run", f"output_dir={tmp_path}"]) == 128 + signal.SIGINT
    assert capsys.readouterr().err == "\ngft: interrupted\n"


def test_submit_refuses_a_recipe_that_cannot_fit_its_gpus_before_contacting_the_cluster(capsys, monkeypatch):
    import pipeline.tools.submit

    submitted = []
    monkeypatch.setattr(pipeline.tools.submit, "submit", lambda *args: submitted.append(args))
    gpus = ["learner.num_gpus=1", "rollout.num_gpus=1", "rollout.num_workers=1"]
    code = main(["submit", *gpus, "--address", "http://127.0.0.1:9", "--gpu-memory", "0.01"])  # the 1 GPU it asks
    assert code == 2 and submitted == []
    err = capsys.readouterr().err
    assert "the recipe does not fit 1 GPUs of 0.01 GiB, nothing was submitted: a learner+rollout GPU needs" in err
    assert "Traceback" not in err
    # without --gpu-memory it is not planned, and says so
    assert main(["submit", *gpus, "--address", "http://127.0.0.1:9", "--no-wait"]) == 0 and len(submitted) == 1
    assert "the recipe's memory was not planned: give --gpus and --gpu-memory" in capsys.readouterr().err
