"""The docs name what exists: DESIGN.md sections cited by the code, modules in ARCHITECTURE.md and
the README, and one version string."""

import ast
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"docs/DESIGN\.md ((?:§\d+(?:–§\d+)?(?:, )?)+)")


def design_sections() -> set[int]:
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    return {int(n) for n in re.findall(r"^## (\d+)\. ", text, re.M)}


def references() -> dict[str, set[int]]:
    """``file:line -> section numbers`` of every ``docs/DESIGN.md §N`` in src, benchmarks and tests."""
    found: dict[str, set[int]] = {}
    for folder in ("src", "benchmarks", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for i, line in enumerate(path.read_text().splitlines(), 1):
                for refs in REFERENCE.findall(line):
                    numbers = set()
                    for a, b in re.findall(r"§(\d+)(?:–§(\d+))?", refs):
                        numbers.update(range(int(a), int(b or a) + 1))
                    found[f"{path.relative_to(ROOT)}:{i}"] = numbers
    return found


def test_every_design_reference_names_an_existing_section():
    sections = design_sections()
    assert sections == set(range(1, 14))
    refs = references()
    assert len(refs) >= 20  # the layers cite the method document
    missing = {where: sorted(n - sections) for where, n in refs.items() if n - sections}
    assert not missing, f"references to sections docs/DESIGN.md does not have: {missing}"
    # the generic format's reader cites its own section
    assert refs["src/bmnas/features/generic.py:1"] == {12}


# ------------------------------------------------------------------------------ docs/ARCHITECTURE.md
PKG = ROOT / "src" / "bmnas"
# a path-like token between backticks: `core/errors.py`, `features/datasets/`, `presets/`
PATH_TOKEN = re.compile(r"`([A-Za-z_][\w/.<>-]*(?:\.py|/))`")
# bottom to top (as tests/test_layers.py's FLOORS); space, engine and report stand side by side
FLOOR_RANK = {"core": 0, "space": 1, "engine": 1, "report": 1, "features": 2, "serve": 3, "method": 4}
FLOOR_RANK |= {"studies": 5, "cli": 6}


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row of ``text`` (header and ``---`` rows left out)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.match(r"^\|\s*(module|-+)\s*\|", line):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def architecture() -> str:
    return (ROOT / "docs" / "ARCHITECTURE.md").read_text()


def defined_names(path: Path) -> set[str]:
    """Every function, class and assigned name of a module, its classes' members included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        targets = node.targets if isinstance(node, ast.Assign) else []
        targets = [node.target] if isinstance(node, ast.AnnAssign) else targets
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_architecture_names_only_existing_modules():
    rows = table_rows(architecture())
    tokens = {t for row in rows for cell in row for t in PATH_TOKEN.findall(cell) if "<" not in t}
    assert len(tokens) >= 70  # every module of every floor
    missing = sorted(t for t in tokens if not (PKG / t).exists())
    assert missing == [], f"docs/ARCHITECTURE.md's tables name files src/bmnas does not have: {missing}"
    # outside the tables a path is one under src/bmnas or one of the repository (tests/…, docs/…)
    loose = {t for t in PATH_TOKEN.findall(architecture()) if "<" not in t}
    assert sorted(t for t in loose if not (PKG / t).exists() and not (ROOT / t).exists()) == []


def test_architecture_tables_list_every_module():
    listed = {row[0].strip("`") for row in table_rows(architecture())}
    modules = {
        p.relative_to(PKG).as_posix()
        for p in PKG.rglob("*.py")
        if p.name != "__init__.py" or p.parent == PKG  # a floor's __init__ is its section
    }
    assert sorted(modules - listed) == []
    floors = [p.name for p in PKG.iterdir() if (p / "__init__.py").exists()]
    sections = re.findall(r"^## (\w+)/: ", architecture(), re.M)
    assert sorted(sections) == sorted(floors) == sorted(FLOOR_RANK)
    ranks = [FLOOR_RANK[f] for f in sections]
    assert ranks == sorted(ranks)  # one section per floor, bottom to top


def test_architecture_main_names_are_defined_in_their_module():
    undefined = []
    for module, _, names in (r for r in table_rows(architecture()) if r[0].endswith(".py`")):
        defined = defined_names(PKG / module.strip("`"))
        undefined += [f"{module}: {n}" for n in re.findall(r"`(\w+)`", names) if n not in defined]
    assert undefined == []


def test_architecture_diagram_stacks_the_floors_top_down():
    diagram = re.search(r"```\n(.*?)```", architecture(), re.S).group(1)
    floors = re.findall(r"^ (\w+)/ ", diagram, re.M)
    ranks = [FLOOR_RANK[f] for f in floors]
    assert sorted(floors) == sorted(FLOOR_RANK) and ranks == sorted(ranks, reverse=True)
    flow = ["dataset", "backbones", "extract", "pooling", "cache", "FeatureData"]
    line = next(ln for ln in diagram.splitlines() if ln.startswith(" features/"))
    assert [w for w in re.findall(r"\w+", line) if w in flow] == flow


# ------------------------------------------------------------- README, DESIGN.md headings, versions
def test_design_headings_name_existing_modules():
    headings = re.findall(r"^## \d+\. .*$", (ROOT / "docs" / "DESIGN.md").read_text(), re.M)
    tokens = [t for h in headings for t in PATH_TOKEN.findall(h)]
    assert len(tokens) >= 20 and all("/" in t for t in tokens)  # paths from src/bmnas, not bare names
    assert [t for t in tokens if not (PKG / t).exists()] == []


def resolves(dotted: str) -> bool:
    """``bmnas.a.b.c`` is a module, or an attribute of the longest module prefix of it."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ModuleNotFoundError:
            continue
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_readme_names_only_existing_modules():
    text = (ROOT / "README.md").read_text()
    # file-format names, not modules: bmnas.json (export metadata), "format": "bmnas.genotype"
    dotted = set(re.findall(r"\bbmnas(?:\.[a-z_]\w*)+", text)) - {"bmnas.json", "bmnas.genotype"}
    assert len(dotted) >= 8
    assert sorted(n for n in dotted if not resolves(n)) == []
    assert not resolves("bmnas.searcher") and not resolves("bmnas.features.pooling.pooled_length")
    paths = re.findall(r"src/bmnas/([\w/.<>]+)", text)
    assert [p for p in paths if "<" not in p and not (PKG / p).exists()] == []
    assert "docs/ARCHITECTURE.md" in text and "## How bmnas is built" in text


def test_version_is_the_changelog_top_entry():
    version = re.search(r'__version__ = "(.+)"', (PKG / "_version.py").read_text()).group(1)
    project = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    top = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.M).group(1)
    assert version == project == top == "0.8.0"
