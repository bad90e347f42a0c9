"""Broken weights: NaN/Inf anywhere (IC201), constant weight matrices (IC202)."""

from __future__ import annotations

from initcheck.ir import Graph
from initcheck.report.model import Finding

_MATRIX_OPS = {"linear", "conv", "conv_transpose", "embedding", "rnn", "lstm", "gru"}
_MASK_OPS = {"where", "add", "sub", "min", "max"}


def weight_findings(graph: Graph) -> list[Finding]:
    findings = []
    for node in graph.nodes:
        for index, value in enumerate(node.inputs):
            if value is None or value.const is None or not value.is_weight:
                continue
            stats = value.const
            # -inf is a legitimate fill value of attention masks; NaN never is
            bad = stats.nan_count + (stats.inf_count if node.op not in _MASK_OPS else 0)
            if bad:
                findings.append(Finding(
                    "IC201", "error", "weights",
                    f"'{value.name}' has {stats.nan_count} NaN and {stats.inf_count} Inf of {stats.numel} entries",
                    node.name, node.scope, float(bad), 0.0, "re-initialise this tensor",
                ))
            elif node.op in _MATRIX_OPS and index == (0 if node.op == "embedding" else 1) and stats.is_constant and stats.numel > 1:
                zero = stats.mean_sq == 0
                findings.append(Finding(
                    "IC202", "warning" if zero else "error", "weights",
                    f"every entry of '{value.name}' equals {stats.mean:.4g}: "
                    + ("no signal passes this layer" if zero else "all units compute the same function"),
                    node.name, node.scope, stats.mean, None,
                    "use a random init with std g/sqrt(fan_in)" + ("; ignore if this zero-init is deliberate" if zero else ""),
                ))
    return findings
