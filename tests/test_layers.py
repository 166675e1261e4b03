"""The architecture's one rule: a module imports only from its own layer or the layers below it
(the order in ``pipeline/__init__.py`` and docs/design.md), and only ``driver.roles`` and the
workers talk to Ray's actors. Imports are read as syntax trees, those inside functions included,
and the reader is checked on snippets so that the rule cannot pass by finding nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["core", "embedded", "rewards", "eval", "recipe", "workers", "driver", "tools", "cli"]
# beside the roles, which drive the actors: job submission, which talks to a cluster's job API
RAY_ALLOWED = {"pipeline.driver.roles", "pipeline.tools.submit"}


def layer_of(module: str) -> str | None:
    """The layer of a dotted module of ours; None for the package root and other packages."""
    parts = module.split(".")
    if parts[0] == "workers":
        return "workers"
    if parts[0] == "pipeline" and len(parts) > 1:
        return parts[1]
    return None


def imported(source: str) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [(node.lineno, node.module)]
            # ``from pipeline import eval`` names a layer as an attribute
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                      if node.module == "pipeline"]
    return found


def violations(module: str, source: str) -> list[str]:
    """Imports of ``module`` that point up the layers, or reach Ray from where they should not."""
    here = LAYERS.index(layer_of(module))
    problems = []
    for line, name in imported(source):
        target = layer_of(name)
        if target in LAYERS and LAYERS.index(target) > here:
            problems.append(f"{module}:{line} imports {name} ({target} is above {LAYERS[here]})")
        if name.split(".")[0] == "ray" and module not in RAY_ALLOWED and layer_of(module) != "workers":
            problems.append(f"{module}:{line} imports {name}: only the roles and the workers use Ray")
    return problems


def modules() -> dict[str, Path]:
    files = [*ROOT.glob("pipeline/**/*.py"), *ROOT.glob("workers/*.py")]
    named = {".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): f for f in files}
    return {name: path for name, path in named.items() if layer_of(name) is not None}


def test_every_module_is_in_a_known_layer():
    unknown = sorted(name for name in modules() if layer_of(name) not in LAYERS)
    assert not unknown, f"modules outside the layers of tests/test_layers.py: {unknown}"


def test_imports_only_point_down_the_layers():
    found = modules()
    assert len(found) > 50  # the scan saw the tree
    problems = [p for name, path in sorted(found.items()) for p in violations(name, path.read_text())]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("pipeline.core.batch", "from pipeline.recipe.config import RunConfig", "pipeline.recipe.config (recipe is above core)"),
    ("pipeline.eval.rescore", "def f():\n    import pipeline.driver.run", "pipeline.driver.run (driver is above eval)"),
    ("pipeline.core.data", "from pipeline import tools", "pipeline.tools (tools is above core)"),
    ("pipeline.driver.stages", "import ray", "only the roles and the workers use Ray"),
    ("pipeline.driver.run", "from ray.exceptions import RayActorError", "only the roles and the workers use Ray"),
])
def test_the_rule_catches_an_import_that_breaks_it(module, source, expected):
    (problem,) = violations(module, source)
    assert expected in problem


@pytest.mark.parametrize(("module", "source"), [
    ("pipeline.driver.run", "from pipeline.core.batch import make_batch\nfrom workers.learner import Learner"),
    ("workers.rollout", "import ray\nfrom pipeline.core.errors import PolicyNotFinite"),
    ("pipeline.driver.roles", "import ray"),
])
def test_the_rule_lets_downward_imports_pass(module, source):
    assert violations(module, source) == []
