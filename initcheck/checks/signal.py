"""Exploding and vanishing forward signals and gradients (IC101, IC102, IC111, IC112; docs/theory.md §13)."""

from __future__ import annotations

import math

from initcheck.analysis.layers import REFERENCE_OPS
from initcheck.checks import repairs
from initcheck.checks.registry import CheckContext, check
from initcheck.checks.weights import zero_scale_findings
from initcheck.codes import limit
from initcheck.report.model import Finding, LayerRow, Repair


def _severity(size: float, warn: float, error: float) -> str | None:
    if size >= error:
        return "error"
    if size >= warn:
        return "warning"
    return None


def _worst_weight(rows: list[LayerRow], at: LayerRow, downstream: bool) -> LayerRow | None:
    """The weighted layer whose std is furthest from its target: upstream of `at` for forward problems,
    downstream of it for gradient problems (gradients are shaped by the layers after them)."""
    weighted = [
        r
        for r in rows
        if (r.index >= at.index if downstream else r.index <= at.index)
        and r.weight_std
        and r.target_std
        and not (r.small_head or r.lead_in)
    ]  # deliberate: never the fix
    if not weighted:
        return None
    return max(weighted, key=_miss)


def _miss(row: LayerRow) -> float:
    """How far a weighted row's std is from its target, in natural-log units (0 for rows without a weight)."""
    return abs(math.log(row.weight_std / row.target_std)) if row.weight_std and row.target_std else 0.0


def _cause(rows: list[LayerRow], at: LayerRow, sign: int) -> LayerRow | None:
    """For a forward problem: the weighted layer since the segment's start (the last forward reference before
    `at`: a normalisation, averaging, embedding or softmax) whose own gain moves K furthest in the problem's direction: the layer that makes it,
    not any layer far from its target (GPT-2's deliberately small residual projections are no cause of a big
    lm_head)."""
    start = max((r.index for r in rows if r.index < at.index and r.op.split("+")[0] in REFERENCE_OPS), default=-1)
    weighted = [
        r
        for r in rows
        if start < r.index <= at.index
        and r.weight_std
        and r.target_std
        and r.gain_log10 is not None
        and math.isfinite(r.gain_log10)
        and sign * r.gain_log10 > 0
    ]
    return max(weighted, key=lambda r: sign * (r.gain_log10 or 0.0), default=None)


def _fix(
    rows: list[LayerRow], row: LayerRow, downstream: bool, sign: int = 1, every: list[LayerRow] | None = None
) -> tuple[str, float | None, Repair]:
    worst = (None if downstream else _cause(rows, row, sign)) or _worst_weight(rows, row, downstream)
    if worst is None or not worst.weight_std or not worst.target_std or _miss(worst) < math.log(1.2):
        text = "add a normalisation layer or rescale the branch that changes the scale"
        return text, None, repairs.unfixable("no weight is off its target std: the scale changes elsewhere")
    factor = worst.target_std / worst.weight_std
    act = f" before {worst.activation}" if worst.activation else ""
    text = (
        f"initialise weights with std {worst.target_std:.3g} = g/sqrt(fan_in){act} (now {worst.weight_std:.3g}); "
        f"e.g. multiply '{worst.label}' and layers like it by {factor:.3g}"
    )
    if worst.tied_with:
        text += (
            f"; its weight is tied to the embedding '{worst.tied_with}' (one tensor): scale the shared table, "
            f"and multiply the embedding's output by {1 / factor:.3g} if the input side must keep its scale "
            "(as T5 and Gemma scale embeddings by sqrt(d))"
        )
        return (
            text,
            factor,
            repairs.unfixable(f"'{worst.label}' shares its weight with the embedding '{worst.tied_with}'"),
        )
    return (
        text,
        factor,
        repairs.change([repairs.of_row(r, math.exp(-_signed_miss(r))) for r in _alike(every or rows, worst)]),
    )


def _alike(rows: list[LayerRow], worst: LayerRow) -> list[LayerRow]:
    """'Layers like it', initialised the same way: off their target std by the same factor as the worst one
    (within 10%: a wrong gain), or drawn with the same std whatever their fan-in (within 10%, as a small layer's
    sample std scatters: N(0, 1) everywhere) and off by 20% or more the same way; deliberately small output
    layers and tied weights are left alone."""
    miss = _signed_miss(worst)

    def alike(r: LayerRow) -> bool:
        if abs(_signed_miss(r) - miss) < math.log(1.1):
            return True
        same_draw = abs(math.log(r.weight_std / worst.weight_std)) < math.log(1.1)  # type: ignore[operator]
        return same_draw and abs(_signed_miss(r)) >= math.log(1.2) and _signed_miss(r) * miss > 0

    return [r for r in rows if r.weight_std and r.target_std and not r.small_head and not r.tied_with and alike(r)]


def _signed_miss(row: LayerRow) -> float:
    return math.log(row.weight_std / row.target_std) if row.weight_std and row.target_std else 0.0


def _extreme(rows: list[LayerRow], attr: str, sign: int) -> LayerRow | None:
    candidates = [r for r in rows if getattr(r, attr) is not None and sign * getattr(r, attr) > 0]
    return max(candidates, key=lambda r: sign * getattr(r, attr), default=None)


def _directional(rows, attr, sign, code, kind, what) -> list[Finding]:
    warn, error = limit(code, "warning"), limit(code, "error")
    findings, every = [], rows  # every weighted layer may be repaired, whichever rows are judged
    rows = [r for r in rows if not r.lead_in]  # a head's lead-in is judged with the head
    if code == "IC102":  # small outputs are judged on their own (small_head_findings), not as the body's collapse
        rows = [r for r in rows if not r.small_head]
    for normalized in (False, True):
        group = [r for r in rows if r.normalized_downstream == normalized]
        row = _extreme(group, attr, sign)
        if row is None:
            continue
        value = getattr(row, attr)
        size = abs(value) if math.isfinite(value) else math.inf
        severity = _severity(size, warn, error)
        if severity is None:
            continue
        if normalized:
            severity = "info"
        fix, factor, repair = _fix(rows, row, downstream=kind == "backward", sign=sign, every=every)
        direction = "grows" if sign > 0 else "shrinks"
        decades = f"{size:.2f}" if math.isfinite(size) else "all"
        origin = "from the outputs back to" if kind == "backward" else "from its reference up to"
        message = f"{what} {direction} by {decades} decades {origin} '{row.label}' ({row.op})"
        if normalized:
            message += "; every path from it meets a normalisation, so only epsilon and the normalisation's 1/v see it"
        if f"{kind} measured" in row.flags:  # analysis.agreement.resting_on_measurement
            message += " (measured: the prediction's error bar is wider than 2x here, so the probe's numbers decide)"
        findings.append(
            Finding(code, severity, kind, message, row.node, row.scope, value, warn, fix, factor, repair=repair)
        )
    return findings


def small_head_findings(rows: list[LayerRow]) -> list[Finding]:
    """An output layer that starts small (zero or N(0, 0.02) heads, small logits) is what practitioners choose:
    the loss starts near ln(classes). Information, with the factor it puts on every gradient into the body."""
    warn = limit("IC102", "warning")
    findings = []
    for row in rows:
        value = row.forward_log10
        if not row.small_head or value is None or value > -warn:
            continue
        gain = 10**row.gain_log10 if row.gain_log10 is not None and math.isfinite(row.gain_log10) else 0.0
        decades = f"{-value:.2f}" if math.isfinite(value) else "all"
        message = (
            f"output layer '{row.label}' starts small ({decades} decades below its reference; its own factor "
            f"x{gain:.3g}): the loss "
            "starts near ln(classes), as zero- or small-initialised heads intend; the gradient into the body "
            "is scaled by about the same factor, which adaptive optimisers (Adam) rescale per tensor"
        )
        fix = (
            "nothing to do if intended; with plain SGD and no warm-up, initialise it with std "
            f"{row.target_std:.3g} = 1/sqrt(fan_in)"
            if row.target_std
            else "nothing to do if intended"
        )
        findings.append(Finding("IC102", "info", "forward", message, row.node, row.scope, value, warn, fix, None))
    return findings


def signal_findings(rows: list[LayerRow]) -> list[Finding]:
    return (
        small_head_findings(rows)
        + _directional(rows, "forward_log10", 1, "IC101", "forward", "forward second moment")
        + _directional(rows, "forward_log10", -1, "IC102", "forward", "forward second moment")
        + _directional(rows, "backward_log10", 1, "IC111", "backward", "gradient second moment")
        + _directional(rows, "backward_log10", -1, "IC112", "backward", "gradient second moment")
    )


@check("signal", "IC101", "IC102", "IC111", "IC112")
def _signal_check(ctx: CheckContext) -> list[Finding]:
    return signal_findings(ctx.rows) + zero_scale_findings(ctx.graph, at_branch_end=False)
