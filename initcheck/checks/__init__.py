"""Checks turn the symbolic results into findings. They never print."""

from __future__ import annotations

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
from initcheck.ir import Graph, Node
from initcheck.report.model import Finding, LayerRow, severity_rank

__all__ = ["CODES", "run_checks"]


def run_checks(graph: Graph, result: SymbolicResult, rows: list[LayerRow], depth: int = 0,
               width: int | None = None, chis: dict[Node, Susceptibility] | None = None,
               hints: dict | None = None) -> list[Finding]:
    """hints: what the user says the graph does not carry (e.g. {"degree": 32} for graph attention)."""
    findings = weight_findings(graph) + signal_findings(rows) + coverage_findings(graph, result)
    findings += checkerboard_findings(graph, result) + residual_findings(graph, result) + attention_findings(graph, result)
    findings += depth_width_findings(graph, result, depth, width) + recurrent_findings(graph, result)
    findings += dropout_findings(graph) + branch_sum_findings(graph, result) + concat_findings(graph, result)
    findings += weight_mean_findings(graph, result) + bias_findings(graph, result)
    findings += subpixel_findings(graph) + strided_gradient_findings(graph, result)
    findings += norm_placement_findings(graph, result) + graph_attention_findings(graph, result, (hints or {}).get("degree"))
    findings += criticality_findings(chis if chis is not None else susceptibilities(graph, result), result)
    return sorted(findings, key=lambda f: (-severity_rank(f.severity), f.code, f.node))
