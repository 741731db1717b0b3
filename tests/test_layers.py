"""The house keeps its floors: every module's imports, read with ``ast``, only go down.

Floors, bottom to top: ``core`` → ``space`` | ``engine`` | ``report`` (side by side, not importing
each other) → ``features`` → ``serve`` → ``method`` → ``studies`` → ``cli``. Inside ``method`` the
files import in data-flow order only: ``run`` → ``search`` → ``placement`` → ``bilevel`` → ``select`` →
``rerank`` → ``train`` → ``probe``.
No circle, and no import inside a function except the short list below (each with its reason).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "bmnas"
FLOORS = {"core": 0, "space": 1, "engine": 1, "report": 1, "features": 2, "serve": 3, "method": 4}
FLOORS |= {"studies": 5, "cli": 6}
METHOD_ORDER = ["run", "search", "placement", "bilevel", "select", "rerank", "train", "probe", "record"]

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
    "pandas",
    "pyarrow",
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


def imports(path: Path, source: str | None = None) -> list[tuple[str, bool, int]]:
    """``(absolute module, inside a function?, line)`` of every import in ``path`` (or ``source``)."""
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

    visit(ast.parse(path.read_text() if source is None else source), False)
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


def upward(module: str, found: list[tuple[str, bool, int]]) -> list[str]:
    """The imports of ``module`` that do not go down a floor (or, in method/, not forward)."""
    here = floor(module)
    bad = []
    for target, _, line in found:
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
    return bad


def late(module: str, found: list[tuple[str, bool, int]]) -> list[str]:
    """The imports of ``module`` inside a function that the allow-list does not name."""
    return [
        f"{module}:{line} imports {target} inside a function"
        for target, inner, line in found
        if inner
        and floor(module) not in LATE_FLOORS
        and (module, target.split(".")[0]) not in ALLOWED_LATE
        and target.split(".")[0] not in OPTIONAL
    ]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_go_down(module):
    assert upward(module, imports(MODULES[module])) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_inside_a_function_outside_the_allow_list(module):
    assert late(module, imports(MODULES[module])) == []


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every loop of imports a depth-first walk of ``graph`` (module -> imported modules) meets."""
    state: dict[str, int] = {}
    found: list[list[str]] = []

    def dfs(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                dfs(nxt, [*stack, nxt])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m, [m])
    return found


def test_no_circle():
    graph = {m: {t for t, _, _ in imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    graph["bmnas"] = set()  # the face imports lazily, by name
    assert circles(graph) == []


def test_the_checks_catch_what_they_forbid():
    """Each rule fails on a module that breaks it (the checks above are not vacuous)."""
    core = PKG / "core" / "config.py"
    assert upward("bmnas.core.config", imports(core, "from ..engine import loop\n")) == [
        "bmnas.core.config:1 imports bmnas.engine.loop (floor engine is not below core)"
    ]
    assert upward("bmnas.space.ops", imports(PKG / "space" / "ops.py", "from ..report.plots import x\n")) == [
        "bmnas.space.ops:1 imports bmnas.report.plots (floor report is not below space)"
    ]
    train = PKG / "method" / "train.py"
    assert upward("bmnas.method.train", imports(train, "from .search import search\n")) == [
        "bmnas.method.train:1 imports bmnas.method.search (method files import only those after them)"
    ]
    assert upward("bmnas.method.train", imports(train, "from .probe import linear_probe\n")) == []
    source = "def f():\n    from ..engine import loop\n    import optuna\n"
    assert late("bmnas.method.train", imports(train, source)) == [
        "bmnas.method.train:2 imports bmnas.engine.loop inside a function"
    ]
    assert late("bmnas.cli.serve", imports(PKG / "cli" / "serve.py", source)) == []  # the cli floor may
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
