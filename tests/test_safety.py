"""No code of ours turns data into code: no unpickling, no torch.load that may unpickle, no
eval/exec. The source is scanned as syntax trees, so aliases (``import torch as t``) are seen and
comments or strings are not, and the scanner is checked on snippets so the scan cannot pass by
finding nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = [ROOT / name for name in ("pipeline", "workers", "bench") if (ROOT / name).is_dir()]

UNPICKLING = {  # each of these runs whatever code the bytes it reads ask for
    f"{module}.{name}"
    for module in ("pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib")
    for name in ("load", "loads", "Unpickler")
}
UNSAFE_YAML = {f"yaml.{name}" for name in ("load", "load_all", "full_load", "full_load_all", "unsafe_load",
                                           "unsafe_load_all")}  # yaml.safe_load is the one to use
EVALUATING = {"eval", "exec", "builtins.eval", "builtins.exec"}


class Scanner(ast.NodeVisitor):
    """Collects "line N: what" for each unsafe call or import in one module."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}  # local name -> dotted name it was imported as
        self.findings: list[str] = []

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:  # "import a.b" binds a; "import a.b as c" binds c to a.b
            local = alias.asname or alias.name.split(".")[0]
            self.aliases[local] = alias.name if alias.asname else local

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            dotted = f"{node.module}.{alias.name}"
            self.aliases[alias.asname or alias.name] = dotted
            if dotted in UNPICKLING | UNSAFE_YAML:
                self.findings.append(f"line {node.lineno}: imports {dotted}")

    def dotted(self, node: ast.expr) -> str | None:
        """``a.b.c`` for a name or attribute chain, its first name resolved through the imports."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def visit_Call(self, node: ast.Call) -> None:
        name = self.dotted(node.func)
        keywords = {k.arg: k.value for k in node.keywords}

        def is_true(keyword: str) -> bool:
            value = keywords.get(keyword)
            return isinstance(value, ast.Constant) and value.value is True

        if name in UNPICKLING:
            problem = "unpickles"
        elif name == "torch.load" and not is_true("weights_only"):
            problem = "may unpickle: no weights_only=True"
        elif name == "numpy.load" and is_true("allow_pickle"):
            problem = "unpickles: allow_pickle=True"
        elif name in UNSAFE_YAML:
            problem = "may build any Python object from YAML"
        elif name in EVALUATING:
            problem = "runs a string as code"
        else:
            problem = None
        if problem:
            self.findings.append(f"line {node.lineno}: {name}(): {problem}")
        self.generic_visit(node)


def scan(source: str) -> list[str]:
    scanner = Scanner()
    scanner.visit(ast.parse(source))
    return scanner.findings


@pytest.mark.parametrize(
    "source, flagged",
    [
        ("import torch\ntorch.load(f)", True),
        ("import torch as t\nt.load(f, map_location='cpu')", True),
        ("from torch import load\nload(f)", True),
        ("import torch\ntorch.load(f, weights_only=False)", True),
        ("import torch\ntorch.load(f, weights_only=True)", False),
        ("import pickle\npickle.loads(data)", True),
        ("import pickle as p\nwith open(f, 'rb') as h:\n    p.load(h)", True),
        ("from pickle import loads", True),
        ("import cloudpickle\ncloudpickle.loads(data)", True),
        ("import numpy as np\nnp.load(f, allow_pickle=True)", True),
        ("import numpy as np\nnp.load(f)", False),
        ("import yaml\nyaml.load(text, Loader=yaml.Loader)", True),
        ("import yaml\nyaml.safe_load(text)", False),
        ("eval(text)", True),
        ("exec(compile(text, 'f', 'exec'))", True),
        ("model.eval()", False),
        ("import ast\nast.literal_eval(text)", False),
        ("# torch.load(f)\ns = 'pickle.loads(x)'", False),  # comments and strings are not code
    ],
)
def test_the_scanner_flags_what_it_should(source, flagged):
    assert bool(scan(source)) == flagged, scan(source)


def test_no_module_unpickles_or_evaluates_data():
    files = sorted(f for folder in SCANNED for f in folder.rglob("*.py")
                   if not any(part.startswith(".venv") for part in f.relative_to(ROOT).parts))  # TRL's bench venv
    assert ROOT / "pipeline" / "core" / "checkpoint.py" in files and ROOT / "workers" / "learner.py" in files
    findings = [f"{path.relative_to(ROOT)}: {finding}" for path in files for finding in scan(path.read_text())]
    assert findings == []
