"""The Python API: `initcheck.analyze(path, ...) -> Report`. The CLI is one caller of it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from initcheck import frontends
from initcheck.analysis.layers import build_rows, depth_and_width
from initcheck.analysis.symbolic import run_symbolic
from initcheck.checks import run_checks
from initcheck.ir import Graph
from initcheck.passes import fuse_pointwise
from initcheck.report.model import Coverage, Report


def analyze(
    model: str | Path,
    inputs: dict[str, tuple[int, ...]] | None = None,
    *,
    all_nodes: bool = False,
    training: bool = False,
) -> Report:
    """Load a model file, run the symbolic pass and the checks, return the report.

    inputs: shapes for inputs with dynamic dimensions, e.g. {"input_ids": (1, 128)}.
    all_nodes: one table row per node instead of one per layer.
    training: analyse dropout and batch norm as in training mode (batch statistics, active dropout),
      whatever mode the file was exported in.
    """
    graph = frontends.load(model, inputs, training)
    return analyze_graph(graph, all_nodes=all_nodes, mode="train" if training else "eval")


def analyze_graph(graph: Graph, *, all_nodes: bool = False, mode: str = "eval") -> Report:
    fuse_pointwise(graph)
    result = run_symbolic(graph)
    rows = build_rows(graph, result, all_nodes)
    findings = run_checks(graph, result, rows)
    depth, width = depth_and_width(graph)
    return Report(
        model=graph.source,
        producer=graph.producer_name,
        opset=graph.opset,
        mode=mode,
        inputs={v.name: list(v.shape or ()) for v in graph.inputs},
        depth=depth,
        width=width,
        layers=rows,
        findings=findings,
        coverage=_coverage(result),
        notes=list(graph.notes),
        all_nodes=all_nodes,
    )


def _coverage(result) -> Coverage:
    buckets: dict[str, Counter] = {"modeled": Counter(), "approximated": Counter(), "unsupported": Counter()}
    for node, status in result.status.items():
        buckets[status][node.source_op] += 1
    return Coverage(*(dict(sorted(buckets[k].items())) for k in ("modeled", "approximated", "unsupported")))
