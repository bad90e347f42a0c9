"""Measured beside predicted: rows with the probe's measurements and their agreement with the prediction.

Both interpretations give `Estimate`s keyed by value name. A prediction and a measurement agree when
|ln(K_sym / K_meas)| <= ln 1.15 + 3 sqrt(bar_sym^2 + bar_meas^2): the prediction's bar is the finite-width
spread of this network (docs/theory.md §12), the measurement's its sampling error (docs/theory.md §13). A disagreement there means the model breaks an assumption of the pass (e.g. x + x: two
branches that are the same tensor): the check `agreement` (IC401) reports it.
"""

from __future__ import annotations

import math
from dataclasses import replace

from initcheck.codes import limit
from initcheck.ir import Graph
from initcheck.moments import Estimate, clean
from initcheck.report.model import Finding, LayerRow, Measure


def agreement_bound(predicted: Estimate, measured: Estimate) -> float:
    """The largest |ln(K_sym / K_meas)| within the stated tolerance plus three combined error bars."""
    return math.log(limit("IC401", "tolerance")) + 3 * math.hypot(predicted.K_bar, measured.K_bar)


def agreement(predicted: Estimate, measured: Estimate) -> tuple[float, bool] | None:
    """(K_sym / K_meas, whether that is within the bars), or None where there is nothing to compare: a measurement
    that overflowed float32 (activations ~1e19, already an IC101 finding) or a value that is identically zero."""
    if not (0 < predicted.K < math.inf and 0 < measured.K < math.inf):
        return None
    ratio = predicted.K / measured.K
    return ratio, abs(math.log(ratio)) <= agreement_bound(predicted, measured)


def gradient_agreement(predicted: Estimate, measured: Estimate) -> tuple[float, bool] | None:
    """(G_sym / G_meas, whether that is within ln 1.15 + 3 sqrt(G_bar_sym^2 + G_bar_meas^2)), or None where either
    gradient is missing, zero or not finite."""
    p, m = predicted.G, measured.G
    if not (p and m and 0 < p < math.inf and 0 < m < math.inf):
        return None
    bound = math.log(limit("IC401", "tolerance")) + 3 * math.hypot(predicted.G_bar, measured.G_bar)
    return p / m, abs(math.log(p / m)) <= bound


def uninformative_note(rows: list[LayerRow], probed: bool) -> str | None:
    """Rows whose stated bar is wider than 2x, said once: their predicted numbers are ensemble averages."""
    wide = [r for r in rows if r.uninformative]
    if not wide:
        return None
    where = "the probe's measurements stand for them" if probed else "run the probe for measured numbers"
    return (
        f"{len(wide)} of {len(rows)} rows (from '{wide[0].label}') have an error bar wider than 2x (finite width or "
        f"approximations): their predictions are ensemble averages that say little about this network; {where}"
    )


def with_measurements(rows: list[LayerRow], predicted: dict[str, Estimate], probe) -> list[LayerRow]:
    """New rows with the measurement of each row's value beside its prediction, and their agreement."""
    measured = probe.estimates()
    return [_measured_row(row, predicted.get(row.value), measured.get(row.value), probe) for row in rows]


def _measured_row(row: LayerRow, predicted: Estimate | None, measured: Estimate | None, probe) -> LayerRow:
    if measured is None:
        return row
    extra = probe.measured[row.value]  # what only measurement shows
    phases = extra.phases
    judged = agreement(predicted, measured) if predicted is not None else None
    # the row's own estimate: its G bar carries the gradient's finite-width spread from the outputs back (§12)
    judged_grad = gradient_agreement(row.symbolic, measured) if row.symbolic is not None else None
    return replace(
        row,
        measured=measured,
        agreement=judged[0] if judged else None,
        agrees=judged[1] if judged else None,
        grad_agreement=judged_grad[0] if judged_grad else None,
        grad_agrees=judged_grad[1] if judged_grad else None,
        dead_fraction=extra.dead_fraction,
        saturation=extra.saturation,
        cosine=extra.cosine,
        measured_phase_ratio=max(phases) / min(phases) if phases and min(phases) > 0 else None,
    )


def with_quotes(findings: list[Finding], graph: Graph, probe) -> list[Finding]:
    """New findings with the probe's measurement of each finding's number beside the prediction."""
    return [replace(f, measured=_measure(f.measure, graph, probe)) if f.measure else f for f in findings]


def _measure(spec: Measure, graph: Graph, probe) -> float | None:
    names = spec.values
    got = [probe.measured.get(n) for n in names]
    if not names or any(m is None for m in got):
        return None
    a, kind = got[0], spec.kind
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


def resting_on_measurement(rows: list[LayerRow], graph: Graph, result, probe, all_nodes: bool) -> list[LayerRow]:
    """The rows as the signal checks should judge them once the probe ran: where a row's stated bar is wider than
    2x (its prediction is an ensemble average that says little about this network) and it was measured, its
    forward log10 comes from the measurement, against measured references; so does its backward log10 where the
    gradient's bar is that wide (the gradient's spread builds up from the outputs back: the variance of the
    deepest row's bar less the row's own). Other rows keep the prediction."""
    from initcheck.analysis.layers import build_rows, from_the_outputs_back

    wide = math.log(limit("IC401", "uninformative"))
    gradient_bars = from_the_outputs_back([r.symbolic.K_bar for r in rows])
    forward = {r.value for r in rows if r.measured is not None and r.symbolic.K_bar >= wide}
    backward = {r.value for r, bar in zip(rows, gradient_bars) if r.measured is not None and bar >= wide}
    if not forward and not backward:
        return rows

    measured = {r.value: r for r in build_rows(graph, _measured_result(result, probe), all_nodes)}
    return [
        replace(
            row,
            forward_log10=measured[row.value].forward_log10 if row.value in forward else row.forward_log10,
            backward_log10=measured[row.value].backward_log10 if row.value in backward else row.backward_log10,
            flags=row.flags
            + [
                f"{kind} measured"
                for kind, judged in (("forward", forward), ("backward", backward))
                if row.value in judged
            ],
        )
        if row.value in measured and (row.value in forward or row.value in backward)
        else row
        for row in rows
    ]


def _measured_result(result, probe):
    """A copy of the symbolic result with every measured value's K and G in place of the predicted ones."""
    estimates = probe.estimates()
    forward, backward = dict(result.forward), dict(result.backward)
    for value, moments in result.forward.items():
        got = estimates.get(value.name)
        if got is None or not math.isfinite(got.K):
            continue
        forward[value] = clean(got.m, got.K, min(moments.M, got.K), moments.exact, S=moments.S)
        if got.G is not None and math.isfinite(got.G):
            backward[value] = got.G
    return replace(result, forward=forward, backward=backward)
