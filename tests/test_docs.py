"""The project stands alone: the README, docs, messages and code never point outside the repository, and every
section of docs/theory.md they cite exists."""

from __future__ import annotations

import re

from conftest import ROOT

SOURCES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "initcheck").rglob("*.py")),
    *sorted((ROOT / "initcheck").rglob("*.json")),
]


def test_nothing_points_outside_the_repository():
    offenders = [
        str(p.relative_to(ROOT))
        for p in SOURCES
        if "../shared" in p.read_text(encoding="utf-8") or "shared/theory" in p.read_text(encoding="utf-8")
    ]
    assert not offenders


def test_every_cited_theory_section_exists():
    sections = set(re.findall(r"^## (\d+)\.", (ROOT / "docs" / "theory.md").read_text(), flags=re.M))
    cited = set()
    for path in SOURCES:
        for match in re.finditer(r"theory\.md §(\d+)(?:[-–]§?(\d+))?", path.read_text(encoding="utf-8")):
            cited.update(n for n in match.groups() if n)
    assert cited and cited <= sections, sorted(cited - sections)
