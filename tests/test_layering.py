"""Imports go one way: io -> preprocess -> data -> models -> slicewise/checkpoints -> train -> inference ->
pseudolabel (with anatomy) -> pipeline -> cli.

`metrics`, `evaluate`, `volumes`, `efficiency`, `training_log` and `report` sit beside the chain: anything may use
them, and they use only the foundation (errors, atomic, labels, config, distributed, runtime, progress, io, batch) and
each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "selflabel"

CHAIN = [
    {"errors", "atomic", "labels", "config", "distributed", "runtime", "progress"},
    {"io", "batch"},
    {"preprocess", "phantom"},
    {"data"},
    {"models", "losses"},
    {"slicewise", "checkpoints"},
    {"train"},
    {"inference"},
    {"pseudolabel", "anatomy"},
    {"pipeline"},
    {"cli"},
]
SIDE = {"metrics", "evaluate", "volumes", "efficiency", "training_log", "report"}
FOUNDATION = CHAIN[0] | CHAIN[1]


def _module(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0] if rel.parts[0] != "__init__" else "__init__"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("selflabel."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("selflabel.")}
    return found


def _rank(module: str) -> int:
    return next(i for i, layer in enumerate(CHAIN) if module in layer)


def test_every_module_has_a_place():
    modules = {_module(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert modules <= set().union(*CHAIN) | SIDE, modules - set().union(*CHAIN) - SIDE


def test_imports_flow_one_way():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        me = _module(path)
        if me == "__init__":
            continue
        for other in _imports(path) - {me}:
            if me in SIDE:
                ok = other in FOUNDATION | SIDE
            elif other in SIDE:
                ok = True
            else:
                ok = _rank(other) <= _rank(me)
            if not ok:
                wrong.append(f"{path.relative_to(PACKAGE)} imports selflabel.{other}")
    assert not wrong, wrong
