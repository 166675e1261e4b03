"""The `gft` command line: help texts and clean refusals of bad input."""

import pytest

from pipeline.cli import main


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "run" in out and "build-default" in out


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


def test_a_missing_recipe_is_named(capsys):
    assert main(["run", "no/such/recipe.yaml"]) == 2
    assert "no/such/recipe.yaml does not exist" in capsys.readouterr().err
