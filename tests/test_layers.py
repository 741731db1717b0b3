"""The house keeps its floors: every module's imports, read with ``ast``, only go down.

Floors, bottom to top: ``core`` → ``space`` | ``engine`` | ``report`` (side by side, not importing
each other) → ``features`` → ``serve`` → ``method`` → ``studies`` → ``cli``. Inside ``method`` the
files import in data-flow order only: ``run`` → ``search`` → ``rerank`` → ``train`` → ``probe``.
No circle, and no import inside a function except the short list below (each with its reason).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "bmnas"
FLOORS = {"core": 0, "space": 1, "engine": 1, "report": 1, "features": 2, "serve": 3, "method": 4}
FLOORS |= {"studies": 5, "cli": 6}
METHOD_ORDER = ["run", "search", "rerank", "train", "probe"]

# (module, imported module) -> why it is imported inside a function
ALLOWED_LATE = {
    ("bmnas", "importlib"): "the package face loads a submodule (and torch) on first use only",
    ("bmnas.core.data", "torch"): "core stays torch-free until a split is asked for a batch",
    ("bmnas.core.fileio", "torch"): "core stays torch-free until a tensor file is saved",
    ("bmnas.core.config", "importlib"): "presets are read from the package only when a preset is asked for",
}
# the command line starts without torch: a command imports its work when it runs
LATE_FLOORS = {"cli"}
# optional dependencies (extras), imported where they are used so that bmnas works without them
OPTIONAL = {
    "PIL",
    "h5py",
    "safetensors",
    "tokenizers",
    "optuna",
    "sqlalchemy",
    "onnx",
    "onnxruntime",
    "onnxscript",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """``(absolute module, inside a function?, line)`` of every import in ``path``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, late: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = late or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((a.name, inner, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target == "__future__":
                    continue
                # `from . import x` / `from .pkg import mod`: the module itself when it is one
                subs = [f"{target}.{a.name}" for a in child.names]
                mods = [s for s in subs if is_module(s)]
                found.extend([(m, inner, child.lineno) for m in mods] or [(target, inner, child.lineno)])
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return found


def is_module(dotted: str) -> bool:
    if not dotted.startswith("bmnas"):
        return False
    p = PKG.parent / dotted.replace(".", "/")
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def floor(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FLOORS else None


def test_every_module_lives_on_a_floor():
    loose = [
        m for m in MODULES if floor(m) is None and m not in ("bmnas", "bmnas.__main__", "bmnas._version")
    ]
    assert loose == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_go_down(module):
    here = floor(module)
    bad = []
    for target, _, line in imports(MODULES[module]):
        there = floor(target)
        if not target.startswith("bmnas") or there is None or here is None:
            continue
        if there == here:
            if here == "method":
                a, b = module.split(".")[2], target.split(".")[2]
                if METHOD_ORDER.index(b) <= METHOD_ORDER.index(a):
                    bad.append(
                        f"{module}:{line} imports {target} (method files import only those after them)"
                    )
            continue
        if FLOORS[there] >= FLOORS[here]:
            bad.append(f"{module}:{line} imports {target} (floor {there} is not below {here})")
    assert bad == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_inside_a_function_outside_the_allow_list(module):
    late = [
        f"{module}:{line} imports {target} inside a function"
        for target, inner, line in imports(MODULES[module])
        if inner
        and floor(module) not in LATE_FLOORS
        and (module, target.split(".")[0]) not in ALLOWED_LATE
        and target.split(".")[0] not in OPTIONAL
    ]
    assert late == []


def test_no_circle():
    graph = {m: {t for t, _, _ in imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    graph["bmnas"] = set()  # the face imports lazily, by name
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def dfs(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                dfs(nxt, [*stack, nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m, [m])
    assert circles == []


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rules above can fail: a core module importing the engine is caught."""
    assert floor("bmnas.core.config") == "core" and FLOORS["engine"] > FLOORS["core"]
    fake = PKG / "core" / "errors.py"
    targets = {t for t, _, _ in imports(fake)}
    assert all(floor(t) in (None, "core") for t in targets)
    assert floor("bmnas.engine.loop") == "engine"
