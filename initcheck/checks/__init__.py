"""Checks turn the symbolic results into findings. They never print."""

from __future__ import annotations

import re
from dataclasses import replace

from initcheck.analysis.criticality import Susceptibility, susceptibilities
from initcheck.analysis.symbolic import SymbolicResult
from initcheck.checks.architecture import (
    attention_findings,
    depth_width_findings,
    dropout_findings,
    recurrent_findings,
)
from initcheck.checks.codes import CODES
from initcheck.checks.coverage import coverage_findings
from initcheck.checks.criticality import bias_findings, criticality_findings, weight_mean_findings
from initcheck.checks.graph_attention import graph_attention_findings
from initcheck.checks.merges import branch_sum_findings, concat_findings
from initcheck.checks.residual import norm_placement_findings, residual_findings
from initcheck.checks.sampling import checkerboard_findings, strided_gradient_findings, subpixel_findings
from initcheck.checks.signal import signal_findings
from initcheck.checks.weights import weight_findings
from initcheck.errors import debugging
from initcheck.ir import Graph, Node
from initcheck.report.model import Finding, LayerRow, severity_rank

__all__ = ["CODES", "run_checks"]


def run_checks(graph: Graph, result: SymbolicResult, rows: list[LayerRow], depth: int = 0,
               width: int | None = None, chis: dict[Node, Susceptibility] | None = None,
               hints: dict | None = None) -> list[Finding]:
    """hints: what the user says the graph does not carry (e.g. {"degree": 32} for graph attention). A check
    that fails on an odd graph is skipped with a note in the report instead of losing the other findings."""
    degree = (hints or {}).get("degree")
    checks = [
        ("weights", lambda: weight_findings(graph)), ("signal", lambda: signal_findings(rows)),
        ("coverage", lambda: coverage_findings(graph, result)), ("checkerboard", lambda: checkerboard_findings(graph, result)),
        ("residual", lambda: residual_findings(graph, result)), ("attention", lambda: attention_findings(graph, result)),
        ("depth-to-width", lambda: depth_width_findings(graph, result, depth, width)),
        ("recurrence", lambda: recurrent_findings(graph, result)), ("dropout", lambda: dropout_findings(graph)),
        ("branch sum", lambda: branch_sum_findings(graph, result)), ("concat", lambda: concat_findings(graph, result)),
        ("weight mean", lambda: weight_mean_findings(graph, result)), ("bias", lambda: bias_findings(graph, result)),
        ("sub-pixel", lambda: subpixel_findings(graph)), ("strided gradient", lambda: strided_gradient_findings(graph, result)),
        ("norm placement", lambda: norm_placement_findings(graph, result)),
        ("graph attention", lambda: graph_attention_findings(graph, result, degree)),
        ("criticality", lambda: criticality_findings(chis if chis is not None else susceptibilities(graph, result), result)),
    ]
    findings = []
    for name, check in checks:
        try:
            findings += check()
        except Exception as e:
            if debugging():
                raise
            graph.notes.append(f"{name} check skipped on this model ({type(e).__name__}: {str(e)[:120]})")
    return sorted(group_repeats(_without_deliberate_zeros(findings)),
                  key=lambda f: (-severity_rank(f.severity), f.code, f.node))


def _without_deliberate_zeros(findings: list[Finding]) -> list[Finding]:
    """A residual branch whose last layer is zero on purpose outputs K = 0: that is the cause (IC202 info), not a
    vanishing signal to report again at the same layer."""
    deliberate = {f.node for f in findings if f.code == "IC202" and f.severity == "info"}
    return [f for f in findings if not (f.code in ("IC101", "IC102") and f.node in deliberate)]


# findings that repeat layer after layer from one cause: reported once, at the first layer, with the count
_GROUPED = {("IC511", "warning"), ("IC102", "error"), ("IC202", "info"), ("IC504", "error"), ("IC504", "warning")}


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
            first = replace(first, message=f"{first.message} (and {len(members) - 1} more layer(s) alike: {others})",
                            details={**first.details, "layers": len(members)})
        kept.append(first)
    return kept
