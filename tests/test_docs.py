"""References from the code to docs/DESIGN.md name sections that exist."""

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
