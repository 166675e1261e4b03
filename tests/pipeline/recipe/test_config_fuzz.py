"""Every recipe key given a wrong type, zero, a negative, a huge value, an empty value, a value that
is not a finite number and (for paths) an unusable path: each is accepted, or refused with a
ConfigError that names the key, never anything else; and through ``gft run``, every refusal is
exit 2 with the key named and no traceback, before anything starts."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from pipeline.cli import main
from pipeline.core.errors import ConfigError
from pipeline.recipe.config import RunConfig, StageConfig, load_recipe

PATH_KEYS = {"model.path", "teacher.model_path", "reward.function", "rollout.python", "output_dir",
             "data.train_files", "data.eval_files"}
STAGES = ("warmup", "gft", "grpo")  # the default recipe's


def leaf_keys(cls=RunConfig, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, type) of every setting of the recipe, each stage's by its name."""
    hints, keys = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        key, tp = prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys += leaf_keys(tp, key + ".")
        elif f.name == "stages":
            keys += [k for stage in STAGES for k in leaf_keys(StageConfig, f"stages.{stage}.")]
        else:
            keys.append((key, tp))
    return keys


def values_for(key: str, tp, unusable: list[str]) -> list[str]:
    """Override values (YAML text) to try for ``key`` of type ``tp``."""
    kind = next((t for t in typing.get_args(tp) if t is not type(None)), tp)
    origin = typing.get_origin(kind)
    if kind is int:
        values = ["x", "0", "-1", str(10**12), "''", "1.5"]
    elif kind is float:
        values = ["x", "0", "-1", "1e308", "''", "nan", "inf", "-inf"]
    elif kind is bool:
        values = ["x", "0", "''"]
    elif kind is str:
        values = ["123", "''", "' '", "'" + "x" * 300 + "'", "[a]"]
    elif origin is list:
        values = ["x", "[]", "['']", "[1]"]
    else:
        values = ["x", "{}", "{a: ''}"]
    if key in PATH_KEYS:
        values += [f"[{path}]" if origin is list else f"{{test: {path}}}" if origin is dict else path for path in unusable]
    return values


@pytest.fixture(scope="module")
def unusable_paths(tmp_path_factory) -> list[str]:
    """A path under a file, one that names nothing, and a name too long for the file system."""
    folder = tmp_path_factory.mktemp("paths")
    (folder / "a-file").write_text("")
    return [str(folder / "a-file" / "below"), str(folder / "nothing" / "here"), str(folder / ("x" * 300))]


@pytest.fixture(scope="module")
def cases(unusable_paths) -> list[tuple[str, str]]:
    return [(key, value) for key, tp in leaf_keys() for value in values_for(key, tp, unusable_paths)]


def _names(message: str, key: str) -> bool:
    """Whether a refusal names ``key`` or the section it belongs to (a stage's group size); a
    stage may be named by its place in the list (its name being what is wrong)."""
    forms = [key] + [key.replace(f"stages.{stage}.", f"stages.{i}.") for i, stage in enumerate(STAGES)]
    for form in forms:
        parts = form.split(".")
        if any(message.startswith(".".join(parts[:n])) for n in range(len(parts), 1 if len(parts) > 1 else 0, -1)):
            return True
    return False


def test_every_key_is_tried(cases):
    keys = {key for key, _ in cases}
    assert len(keys) == len(leaf_keys()) and len(keys) > 100
    assert {"seed", "output_dir", "eval.splits", "stages.gft.tau", "embedded.model.hidden_size"} <= keys


def test_every_value_of_every_key_is_accepted_or_refused_naming_the_key(cases):
    wrong = []
    for key, value in cases:
        try:
            load_recipe(None, [f"{key}={value}"])
        except ConfigError as err:
            if not _names(str(err), key):
                wrong.append((key, value, f"refused without naming the key: {err}"))
        except Exception as err:  # noqa: BLE001 -- the finding this test exists for
            wrong.append((key, value, f"{type(err).__name__}: {err}"))
    assert not wrong, "\n".join(map(str, wrong[:20]))


@pytest.mark.parametrize("override, message", [
    ("seed=-1", "seed must be >= 0 and <= 4294967295, got -1"),
    ("eval.splits=[tset]", "eval.splits: ['tset'] are not eval sets of this recipe; its sets: test, ood"),
    ("stages.gft.weight_decay=nan", "stages.gft.weight_decay: expected a finite number, got 'nan'"),
    ("name=a/b", "name: 'a/b' names folders"),
])
def test_the_values_users_hit_are_refused_with_what_to_fix(override, message):
    with pytest.raises(ConfigError) as info:
        load_recipe(None, [override])
    assert str(info.value).startswith(message)


def test_every_refusal_through_the_cli_is_exit_2_naming_the_key(cases, unusable_paths, capsys):
    """``gft run KEY=VALUE`` for every value validation refuses, and those refused as the run
    starts (an output_dir under a file or with a name too long, where the run claims its folder;
    an interpreter or a cluster that is not there; more actors than a local cluster can bear):
    exit 2 and the key, before anything starts."""
    refused = []
    for key, value in cases:
        try:
            load_recipe(None, [f"{key}={value}"])
        except ConfigError:
            refused.append((key, value))
    refused += [("output_dir", unusable_paths[0]), ("output_dir", unusable_paths[2]),
                *(("rollout.python", path) for path in unusable_paths),
                ("ray.address", "x" * 300), ("ray.address", "127.0.0.1:1"), ("learner.num_workers", "4096")]
    for key, value in refused:
        code = main(["run", f"{key}={value}"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("gft: error: ") and _names(err.removeprefix("gft: error: "), key), \
            (key, value, code, err[-2000:])
        assert "Traceback" not in err
    assert len(refused) > 500
