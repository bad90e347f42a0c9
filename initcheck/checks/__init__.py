"""Checks turn the symbolic results into findings. They never print."""

from __future__ import annotations

import re
from dataclasses import replace

from initcheck.checks import (  # noqa: F401  (each module registers its checks)
    agreement,
    architecture,
    coverage,
    criticality,
    graph_attention,
    merges,
    residual,
    sampling,
    signal,
    weights,
)
from initcheck.checks.registry import CHECKS, CheckContext, verify_catalogue
from initcheck.codes import CODES
from initcheck.errors import debugging
from initcheck.report.model import Finding, Repair, severity_rank

__all__ = ["CHECKS", "CODES", "CheckContext", "run_checks"]

verify_catalogue()


def run_checks(ctx: CheckContext, stage: str = "symbolic") -> tuple[list[Finding], list[str]]:
    """Every registered check of `stage` on the context: (findings, notes). A check that fails on an odd graph is
    skipped with a note instead of losing the other findings; one that emits a code it did not declare is a bug."""
    findings: list[Finding] = []
    notes: list[str] = []
    for c in CHECKS.values():
        if c.stage != stage:
            continue
        try:
            found = c.run(ctx)
            stray = sorted({f.code for f in found} - set(c.codes))
            if stray:
                raise AssertionError(f"emitted undeclared code(s) {', '.join(stray)}")
        except Exception as e:
            if debugging():
                raise
            notes.append(f"{c.name} check skipped on this model ({type(e).__name__}: {str(e)[:120]})")
            continue
        findings += found
    return findings, notes


def finish(findings: list[Finding]) -> list[Finding]:
    """One cause, one finding, ordered worst first."""
    return sorted(
        group_repeats(_without_deliberate_zeros(findings)), key=lambda f: (-severity_rank(f.severity), f.code, f.node)
    )


def _without_deliberate_zeros(findings: list[Finding]) -> list[Finding]:
    """A residual branch whose last layer is zero on purpose outputs K = 0: that is the cause (IC202 info), not a
    vanishing signal to report again at the same layer."""
    deliberate = {f.node for f in findings if f.code == "IC202" and f.severity == "info"}
    return [f for f in findings if not (f.code in ("IC101", "IC102") and f.node in deliberate)]


# findings that repeat layer after layer from one cause: reported once, at the first layer, with the count
_GROUPED = {
    ("IC401", "warning"),
    ("IC401", "info"),
    ("IC511", "warning"),
    ("IC102", "error"),
    ("IC202", "info"),
    ("IC504", "error"),
    ("IC504", "warning"),
}


def group_repeats(findings: list[Finding]) -> list[Finding]:
    """One cause, one finding: a bias that dominates every layer of a collapsing chain, or every zero-scale norm,
    is one finding naming the first layer and how many more there are (in `details`)."""
    groups: dict[tuple[str, str, str], list[Finding]] = {}
    kept: list[Finding] = []
    for f in findings:
        # the same advice up to its numbers: the same cause
        advice = re.sub(r"[-+]?\d[\d.e+-]*", "#", f.fix.split(";")[0])
        # IC102 groups only the zero-scale findings (value -inf), not forward collapses of different segments
        groupable = (f.code, f.severity) in _GROUPED and (f.code != "IC102" or f.value == float("-inf"))
        key = (f.code, f.severity, advice)
        if groupable:
            groups.setdefault(key, []).append(f)
        else:
            kept.append(f)
    for members in groups.values():
        first = members[0]
        if len(members) > 1:
            others = ", ".join(f"'{m.scope or m.node}'" for m in members[1:4]) + (" ..." if len(members) > 4 else "")
            first = replace(
                first,
                message=f"{first.message} (and {len(members) - 1} more layer(s) alike: {others})",
                details={**first.details, "layers": len(members)},
                repair=merged_repair(members),
            )
        kept.append(first)
    return kept


def merged_repair(members: list[Finding]):
    """One finding for layers alike repairs them all: every member's edits, or the first reason none can."""
    repairs = [m.repair for m in members if m.repair is not None]
    if not repairs:
        return None
    unfixable = next((r for r in repairs if not r.edits), None)
    if unfixable is not None:
        return unfixable
    return Repair(edits=tuple(s for r in repairs for s in r.edits))
