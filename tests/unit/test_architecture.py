"""The shape of model/, checked on its source (AST, nothing imported):

- its sub-packages import only downwards: core < mdd < nn, evaluation, simulation < fusion. A module
  may import from its own sub-package or a lower-ranked one, never sideways (another sub-package of
  the same rank) or upwards; nothing in model/ imports qgis, Qt or the plugin's other parts;
- one cancel exception: ``core.callbacks.Canceled`` is the only class named ``...Canceled``;
- public functions and methods carry type annotations.
"""

from __future__ import annotations

import ast
import os

from helpers.paths import ROOT

MODEL = os.path.join(ROOT, "model")
PACKAGE = "stsfusion"  # the plugin's package name when QGIS (or the tests) import it

RANKS = {"core": 0, "mdd": 1, "nn": 2, "evaluation": 2, "simulation": 2, "fusion": 3}
FORBIDDEN_TOP = {"qgis", "PyQt4", "PyQt5", "PyQt6", "PySide2", "PySide6", "sip"}
CALLBACKS = os.path.join("core", "callbacks.py")


# ---- reading model/ ---------------------------------------------------------------------------


def model_files() -> list:
    """Paths of model/'s modules relative to model/, e.g. 'fusion/fuse.py', sorted."""
    out = []
    for dirpath, dirnames, names in os.walk(MODEL):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        out += [os.path.relpath(os.path.join(dirpath, n), MODEL) for n in names if n.endswith(".py")]
    return sorted(out)


def parse(rel: str) -> ast.Module:
    with open(os.path.join(MODEL, rel), encoding="utf-8") as f:
        return ast.parse(f.read(), filename=os.path.join("model", rel))


def package_of(rel: str) -> list:
    """The dotted package a module's relative imports start from: 'fusion/fuse.py' and
    'fusion/__init__.py' -> ['model', 'fusion']; '__init__.py' -> ['model']."""
    return ["model"] + os.path.dirname(rel).split(os.sep) if os.path.dirname(rel) else ["model"]


def imported_modules(tree: ast.AST, package: list) -> list:
    """(line, dotted target) of every import anywhere in the tree (inside functions, classes and
    ``if TYPE_CHECKING`` too). Relative imports are resolved against ``package``; targets inside the
    plugin are written from its top, e.g. 'model.mdd.format' or 'algorithms.base'; others as
    written ('numpy', 'qgis.core'). ``from X import name`` yields 'X.name' too, so that
    ``from .. import mdd`` names the sub-package it imports."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((node.lineno, _strip_package(alias.name)))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(package):
                    out.append((node.lineno, "<beyond the plugin>"))
                    continue
                base = package[: len(package) - (node.level - 1)]
                parts = base + (node.module.split(".") if node.module else [])
            else:
                parts = _strip_package(node.module).split(".")
            target = ".".join(p for p in parts if p)
            out.append((node.lineno, target))
            out += [(node.lineno, f"{target}.{a.name}") for a in node.names if a.name != "*"]
    return out


def _strip_package(name: str) -> str:
    return name[len(PACKAGE) + 1 :] if name.startswith(PACKAGE + ".") else name


def subpackage(target: str):
    """'model.mdd.format' -> 'mdd'; 'model' or 'model.something_else' -> that name; None when the
    target is not inside model/."""
    parts = target.split(".")
    if parts[0] != "model":
        return None
    return parts[1] if len(parts) > 1 else ""


def direction_problems(rel: str, tree: ast.AST) -> list:
    """Every import of module ``rel`` that goes sideways or upwards, or leaves model/ for the rest
    of the plugin or for qgis/Qt."""
    own = rel.split(os.sep)[0] if os.sep in rel else None  # None: a module directly in model/
    problems = []
    seen = set()
    for line, target in imported_modules(tree, package_of(rel)):
        top = target.split(".")[0]
        where = f"model/{rel.replace(os.sep, '/')}:{line}"
        sub = subpackage(target)
        key = (where, top if sub is None else sub)  # one problem per import statement and target
        if key in seen:
            continue
        seen.add(key)
        if top in FORBIDDEN_TOP:
            problems.append(f"{where} imports {target}: model/ must not import qgis or Qt")
            continue
        if top in ("algorithms", "ui", "plugin", "<beyond the plugin>"):
            problems.append(f"{where} imports {target}: model/ must not import the plugin's other parts")
            continue
        if sub is None or own is None:
            continue
        if sub == "":  # `from .. import x`: the sub-package is the imported name (next entry)
            continue
        if sub not in RANKS:
            if sub.endswith(".py") or os.path.isdir(os.path.join(MODEL, sub)):
                problems.append(f"{where} imports {target}: sub-package {sub!r} has no rank in RANKS")
            elif os.path.isfile(os.path.join(MODEL, sub + ".py")):
                problems.append(f"{where} imports {target}: a module directly in model/ (outside the layers)")
            continue  # a name imported from model/__init__ itself: nothing to rank
        if own not in RANKS:
            problems.append(f"model/{rel}: sub-package {own!r} has no rank in RANKS")
            continue
        if sub == own or RANKS[sub] < RANKS[own]:
            continue
        kind = "sideways" if RANKS[sub] == RANKS[own] else "upwards"
        problems.append(f"{where} imports {target}: {kind} from {own} (rank {RANKS[own]}) to {sub} (rank {RANKS[sub]})")
    return problems


# ---- the checker itself, on code written for it -------------------------------------------------


def _problems_of(rel: str, source: str) -> list:
    return direction_problems(rel, ast.parse(source))


def test_relative_and_absolute_imports_are_resolved():
    src = (
        "from ..mdd.format import MDD\nfrom .tiling import tile_windows\nfrom . import tiling\n"
        "from .. import core\nimport stsfusion.model.nn.predictor\nfrom stsfusion.model.core import grid\n"
        "def f():\n    from ...model.simulation import srf\n"
    )
    targets = [t for _, t in imported_modules(ast.parse(src), ["model", "fusion"])]
    assert {
        "model.mdd.format",
        "model.fusion.tiling",
        "model.fusion",
        "model.core",
        "model.nn.predictor",
        "model.core.grid",
        "model.simulation.srf",
    } <= set(targets)
    assert subpackage("model.mdd.format") == "mdd" and subpackage("numpy.linalg") is None
    # model/__init__.py and a sub-package's __init__.py resolve from their own package
    assert [t for _, t in imported_modules(ast.parse("from .core import vocabulary"), package_of("__init__.py"))][
        0
    ] == "model.core"
    assert package_of(os.path.join("nn", "__init__.py")) == ["model", "nn"]


def test_sideways_upwards_qgis_and_function_level_imports_are_caught():
    fuse = os.path.join("fusion", "fuse.py")
    nn = os.path.join("nn", "training.py")
    assert _problems_of(fuse, "from ..nn.predictor import load_predictor\nfrom ..core import grid\n") == []
    assert _problems_of(nn, "from ..mdd.format import MDD\nfrom .loss import MultiTaskLoss\n") == []
    (p,) = _problems_of(nn, "def f():\n    from ..evaluation.metrics import assess\n")
    assert "sideways from nn (rank 2) to evaluation (rank 2)" in p and "training.py:2" in p
    (p,) = _problems_of(os.path.join("mdd", "build.py"), "from ..fusion import tiling\n")
    assert "upwards from mdd (rank 1) to fusion (rank 3)" in p
    (p,) = _problems_of(os.path.join("core", "grid.py"), "from .. import mdd\n")
    assert "upwards from core" in p
    (p,) = _problems_of(os.path.join("core", "grid.py"), "import stsfusion.model.nn.device\n")
    assert "upwards from core" in p
    (p,) = _problems_of(
        os.path.join("core", "grid.py"), "class A:\n    def f(self):\n        from qgis.core import QgsProject\n"
    )
    assert "must not import qgis or Qt" in p
    assert _problems_of(nn, "from qgis.PyQt.QtCore import QObject\n")
    assert _problems_of(nn, "import PyQt5.QtCore\n")
    assert _problems_of(nn, "from ...algorithms.base import x\n")


# ---- model/ as it is ------------------------------------------------------------------------------


def test_model_has_the_layered_subpackages():
    files = model_files()
    assert len(files) > 20, files  # the walk found the code
    subs = {f.split(os.sep)[0] for f in files if os.sep in f}
    assert subs == set(RANKS), f"sub-packages {sorted(subs)}: give every one a rank in RANKS"
    assert [f for f in files if os.sep not in f] == ["__init__.py"]


def test_subpackages_import_only_downwards_and_never_qgis():
    problems = []
    for rel in model_files():
        problems += direction_problems(rel, parse(rel))
    assert not problems, "\n".join(problems)


def test_the_only_cancel_exception_is_core_callbacks_canceled():
    found = []
    for rel in model_files():
        for node in ast.walk(parse(rel)):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Canceled", "Cancelled")):
                found.append((rel, node.name))
    assert found == [(CALLBACKS, "Canceled")], found


# ---- type hints ---------------------------------------------------------------------------------


def _is_public(name: str) -> bool:
    return not name.startswith("_")


def _missing_annotations(fn, qualname: str, method: bool) -> list:
    a = fn.args
    params = a.posonlyargs + a.args
    decorators = {d.id if isinstance(d, ast.Name) else getattr(d, "attr", "") for d in fn.decorator_list}
    if method and "staticmethod" not in decorators and params:
        params = params[1:]  # self / cls
    params = params + a.kwonlyargs + [p for p in (a.vararg, a.kwarg) if p is not None]
    out = [f"{qualname}: parameter {p.arg!r}" for p in params if p.annotation is None]
    if fn.returns is None and fn.name != "__init__":
        out.append(f"{qualname}: return")
    return out


def annotation_problems(rel: str, tree: ast.Module) -> list:
    where = f"model/{rel.replace(os.sep, '/')}"
    out = []
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, functions) and _is_public(node.name):
            out += _missing_annotations(node, f"{where}:{node.lineno} {node.name}", method=False)
        elif isinstance(node, ast.ClassDef) and _is_public(node.name):
            for item in node.body:
                if not isinstance(item, functions):
                    continue
                dunder = item.name.startswith("__") and item.name.endswith("__")
                if (dunder and item.name != "__init__") or (not dunder and not _is_public(item.name)):
                    continue
                out += _missing_annotations(item, f"{where}:{item.lineno} {node.name}.{item.name}", method=True)
    return out


def test_annotation_checker_on_code_written_for_it():
    src = (
        "def ok(a: int, *b: str, c: float = 1, **d: int) -> None: ...\n"
        "def bad(a, b: int): ...\n"
        "def _private(a): ...\n"
        "class C:\n"
        "    def __init__(self, x): ...\n"
        "    def __repr__(self): ...\n"
        "    def m(self, y: int) -> int: ...\n"
        "    @staticmethod\n    def s(z) -> None: ...\n"
        "    @classmethod\n    def k(cls) -> 'C': ...\n"
        "    def _hidden(self, q): ...\n"
        "class _Private:\n    def m(self, y): ...\n"
    )
    problems = [p.split(" ", 1)[1] for p in annotation_problems("x.py", ast.parse(src))]
    assert problems == ["bad: parameter 'a'", "bad: return", "C.__init__: parameter 'x'", "C.s: parameter 'z'"]


def test_public_functions_and_methods_are_annotated():
    problems = []
    for rel in model_files():
        problems += annotation_problems(rel, parse(rel))
    assert not problems, f"{len(problems)} missing annotation(s):\n" + "\n".join(problems)
