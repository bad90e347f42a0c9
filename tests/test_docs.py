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


def test_the_check_catalogue_is_generated_from_the_code():
    from initcheck.catalogue import render_catalogue

    assert (ROOT / "docs" / "checks.md").read_text(encoding="utf-8") == render_catalogue(), (
        "docs/checks.md is stale: python -m initcheck.catalogue > docs/checks.md"
    )


def test_every_json_field_is_described():
    import json

    schema = json.loads((ROOT / "initcheck" / "report" / "schema.json").read_text())
    reference = (ROOT / "docs" / "json.md").read_text(encoding="utf-8")
    fields = {name for d in schema["$defs"].values() for name in d.get("properties", {})}
    assert len(fields) > 60
    assert sorted(f for f in fields if f"`{f}`" not in reference) == []


def test_the_cli_offers_exactly_the_registered_formats():
    import typing

    from initcheck.cli import _analyze
    from initcheck.report.outputs import FORMATS

    hint = typing.get_type_hints(_analyze, include_extras=True)["format"]
    literal = next(a for a in typing.get_args(typing.get_args(hint)[0]) if typing.get_origin(a) is typing.Literal)
    assert typing.get_args(literal) == FORMATS
