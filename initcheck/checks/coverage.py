"""Ops on the signal path without a rule (IC301): never silent."""

from __future__ import annotations

from collections import defaultdict

from initcheck.analysis.symbolic import SymbolicResult
from initcheck.checks.registry import CheckContext, check
from initcheck.ir import Graph
from initcheck.report.model import Finding


def coverage_findings(graph: Graph, result: SymbolicResult) -> list[Finding]:
    by_op = defaultdict(list)
    for node in graph.nodes:
        if result.status.get(node) == "unsupported" and node not in result.internal:
            by_op[node.source_op].append(node)
    findings = _internal_findings(graph, result)
    for op, nodes in sorted(by_op.items()):
        reason = result.errors.get(nodes[0], "no rule for this op")
        findings.append(
            Finding(
                "IC301",
                "warning",
                "coverage",
                f"{len(nodes)} '{op}' node(s) on the signal path are not modeled ({reason}); moments are passed through "
                f"and downstream numbers are approximate (first: '{nodes[0].label}')",
                nodes[0].name,
                nodes[0].scope,
                float(len(nodes)),
                None,
                "run the empirical probe for measured numbers, or export the op in decomposed form",
            )
        )
    return findings


def _internal_findings(graph: Graph, result: SymbolicResult) -> list[Finding]:
    """Rules or translations that raised (IC302): initcheck's bugs, said as such, one finding per op."""
    by_op = defaultdict(list)
    for node in graph.nodes:
        if node in result.internal:
            by_op[node.source_op].append(node)
    return [
        Finding(
            "IC302",
            "warning",
            "coverage",
            f"initcheck failed on {len(nodes)} '{op}' node(s) ({result.internal[nodes[0]]}): a bug in initcheck, not "
            f"in the model; moments are passed through and downstream numbers are approximate (first: "
            f"'{nodes[0].label}')",
            nodes[0].name,
            nodes[0].scope,
            float(len(nodes)),
            None,
            "please report it with the output of --debug (the traceback); the probe measures the layers after it",
        )
        for op, nodes in sorted(by_op.items())
    ]


@check("coverage", "IC301", "IC302")
def _coverage_check(ctx: CheckContext) -> list[Finding]:
    return coverage_findings(ctx.graph, ctx.result)
