"""Measured beside predicted: fills the probe columns of the rows and judges their agreement.

A value the symbolic pass models exactly agrees when |ln(K_sym / K_meas)| <= ln 1.15 + 3 SE, SE combining
the predicted finite-width spread of this network (docs/theory.md §12) and the probe's own sampling error
(docs/theory.md §13). A disagreement there means the model breaks an assumption of the pass (e.g. x + x: two
branches that are the same tensor): the check `agreement` (IC401) reports it.
"""

from __future__ import annotations

import math

from initcheck.analysis.symbolic import SymbolicResult
from initcheck.codes import limit
from initcheck.ir import Graph
from initcheck.report.model import Finding, LayerRow


def agreement_bound(spread: float, sampling_se: float) -> float:
    return math.log(limit("IC401", "tolerance")) + 3 * math.sqrt(spread + sampling_se**2)


def attach_measurements(rows: list[LayerRow], graph: Graph, result: SymbolicResult, probe) -> None:
    by_name = {v.name: v for v in graph.values.values()}
    for row in rows:
        value = by_name.get(row.value)
        measured = probe.measured.get(row.value) if value is not None else None
        if measured is None:
            continue
        row.measured_mean, row.measured_K, row.measured_G = measured.mean, measured.K, measured.G
        row.dead_fraction, row.saturation, row.cosine = measured.dead_fraction, measured.saturation, measured.cosine
        if measured.phases and min(measured.phases) > 0:
            row.measured_phase_ratio = max(measured.phases) / min(measured.phases)
        predicted = result.forward.get(value)
        # a measurement that overflowed float32 (activations ~1e19, already an IC101 finding) is not compared
        if predicted is None or not (0 < predicted.K < math.inf and 0 < measured.K < math.inf):
            continue
        row.agreement = predicted.K / measured.K
        se = measured.K_se if math.isfinite(measured.K_se) else 0.0
        row.agrees = abs(math.log(row.agreement)) <= agreement_bound(predicted.spread, se)


def quote_measurements(findings: list[Finding], graph: Graph, probe) -> None:
    """Put the probe's measurement of each finding's number beside the prediction, as the finding's `measure`
    asks: ("K_ratio", a, b), ("phase_ratio", a), ("G_energy_ratio", a, b), ("spread", a), ("cosine", a)."""
    for finding in findings:
        if finding.measure:
            finding.measured = _measure(finding.measure, graph, probe)


def _measure(spec: tuple, graph: Graph, probe) -> float | None:
    kind, *names = spec
    got = [probe.measured.get(n) for n in names]
    if not names or any(m is None for m in got):
        return None
    a = got[0]
    if kind == "K_ratio" and got[1].K > 0:
        return a.K / got[1].K
    if kind == "G_energy_ratio" and a.G is not None and got[1].G:
        numel = [graph.values[n].numel if n in graph.values else None for n in names]
        return a.G * numel[0] / (got[1].G * numel[1]) if None not in numel else None
    if kind == "phase_ratio" and a.phases and min(a.phases) > 0:
        return max(a.phases) / min(a.phases)
    if kind == "spread" and probe.resampled_weights and probe.runs > 1 and math.isfinite(a.K_se):
        return a.K_se**2 * probe.runs  # CV^2 of K across weight draws (K_se is the relative SE of the mean)
    if kind == "cosine":
        return a.cosine
    return None
