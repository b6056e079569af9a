"""dvc.yaml lists, for every stage, the code it runs: DVC re-runs a stage only when a listed dependency changes, so a
module missing from the list would leave stale artifacts after a code change."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def imported_modules(path: Path, lazy: bool = False) -> set[str]:
    """The lprnet modules `path` imports at module level (with `lazy`: only inside functions), as 'lprnet/x.py'."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    for node in tree.body:
        if isinstance(node, (ast.If, ast.Try)):  # `if TYPE_CHECKING:`, `try: import ...` still run at import
            top_level |= {id(child) for child in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if (id(node) in top_level) == lazy:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            candidate = REPO / (name.replace(".", "/") + ".py")
            if name.startswith("lprnet.") and candidate.is_file():
                found.add(str(candidate.relative_to(REPO)))
    return found


def code_closure(*paths: str) -> set[str]:
    todo, seen = list(paths), set()
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(imported_modules(REPO / path))
    return seen


def stage_code(script: str) -> set[str]:
    """What a stage script runs: its module-level import closure. Imports inside functions are followed only for
    `load_predictor`, which picks the runtime's module by artifact kind: a stage whose code calls it can run any of
    them.
    (Other function-level imports are optional paths a stage does not take, e.g. the predictor module's TVM loader
    in baseline.)"""
    closure = code_closure(script)
    if any("load_predictor(" in (REPO / path).read_text() for path in closure
           if path != "lprnet/runtime/predictor.py"):
        closure |= code_closure(*imported_modules(REPO / "lprnet/runtime/predictor.py", lazy=True))
    return closure


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_module_a_stage_runs_is_a_dependency(stage):
    spec = STAGES[stage]
    script = spec["cmd"].split()[1]
    assert spec["cmd"].startswith("python stages/") and (REPO / script).is_file()
    missing = stage_code(script) - set(spec["deps"])
    assert not missing, f"{stage}: add {sorted(missing)} to its deps in dvc.yaml"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_no_stage_script_shadows_a_standard_module(stage):
    """A script's folder comes first on sys.path: stages/select.py would be imported as `select` by the standard
    library's socket module, and every stage would fail at its first import of onnx or DVC."""
    script = Path(STAGES[stage]["cmd"].split()[1])
    assert script.stem not in sys.stdlib_module_names, f"{script}: rename it, it shadows the module {script.stem!r}"


def test_the_closure_follows_imports_of_imports():
    assert "lprnet/io.py" in stage_code("stages/data.py")  # stage -> lprnet.data -> lprnet.io
    assert "lprnet/runtime/tvm_runtime.py" in stage_code("stages/benchmark.py")  # through load_predictor
    assert "lprnet/runtime/tvm_runtime.py" not in stage_code("stages/baseline.py")


def test_package_inits_hold_only_a_docstring():
    """Importing lprnet.x.y runs lprnet/x/__init__.py too; dvc.yaml leaves these out, so they must not hold code."""
    for init in sorted((REPO / "lprnet").rglob("__init__.py")):
        body = ast.parse(init.read_text()).body
        assert len(body) <= 1 and all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                                      for node in body), f"{init.relative_to(REPO)} holds code"
