"""The probe's verdicts on the symbolic pass (docs/theory.md §13): rows that disagree beyond their error bars
(IC401), a torch form of an ONNX graph that differs from onnxruntime (IC402), a probe that could not run (IC403).
The numbers are computed in `initcheck.analysis.agreement`; these checks only judge them."""

from __future__ import annotations

from initcheck.checks.registry import CheckContext, check
from initcheck.codes import limit
from initcheck.report.model import Finding


@check("agreement", "IC401", stage="probe")
def _agreement_check(ctx: CheckContext) -> list[Finding]:
    """Every measured row's K and G against their own stated bars; rows whose bar is wider than 2x are not judged
    (marked)."""
    findings = []
    for row in ctx.rows:
        if row.measured is None or row.uninformative:
            continue
        if row.agrees is False and row.agreement:
            findings.append(_disagreement(row, "K", row.measured.K, row.symbolic.K, row.symbolic.K_bar))
        elif row.grad_agrees is False and row.grad_agreement and row.measured.G and row.symbolic.G:
            findings.append(_disagreement(row, "G", row.measured.G, row.symbolic.G, row.symbolic.G_bar))
    return findings


def _disagreement(row, quantity: str, measured: float, predicted: float, bar: float) -> Finding:
    exact = row.symbolic.exact if quantity == "K" else row.symbolic.grad_exact
    why = (
        "so the model breaks an assumption of the symbolic pass (e.g. correlated branches such as x + x, or "
        "weights correlated with their inputs)"
        if exact
        else "so an approximation at or above this layer is off by more than its calibrated bar"
        if quantity == "K"
        else "so an approximation at or after this layer (backward) is off by more than its calibrated bar"
    )
    # a gradient's bar is calibrated on heavy tails (gradients correlated by causal attention, the q/k projections:
    # docs/theory.md §9, §15), so its misses are said as information: never silent, never a failed gate
    return Finding(
        "IC401",
        "warning" if quantity == "K" else "info",
        "probe",
        f"measured {quantity} {measured:.4g} vs predicted {predicted:.4g} (x{measured / predicted:.3g}) at "
        f"'{row.label}' ({row.op}): beyond its error bar (±{bar:.0%}) and the sampling error, {why}",
        row.node,
        row.scope,
        measured / predicted,
        limit("IC401", "tolerance"),
        "trust the measured numbers for this layer and the ones "
        + ("after it" if quantity == "K" else "before it (the gradient flows back)"),
    )


@check("cross-check", "IC402", stage="probe")
def _cross_check(ctx: CheckContext) -> list[Finding]:
    diff = ctx.probe.max_relative_difference if ctx.probe is not None else None
    if diff is None or diff <= limit("IC402", "error"):
        return []
    at = ctx.probe.max_difference_at
    return [
        Finding(
            "IC402",
            "error",
            "probe",
            f"the torch form of the graph differs from onnxruntime by {diff:.3g} (relative L2) at "
            f"'{at}'; measured gradients are not trustworthy",
            at or "",
            "",
            diff,
            limit("IC402", "error"),
            "report the op at that value; use --no-probe or the PyTorch model for gradients",
        )
    ]


@check("probe failure", "IC403", stage="probe")
def _probe_failure_check(ctx: CheckContext) -> list[Finding]:
    error = ctx.probe_error
    if error is None:
        return []
    first = next((line for line in str(error).splitlines() if line.strip()), "")
    return [
        Finding(
            "IC403",
            "warning",
            "probe",
            f"the probe could not run the model ({type(error).__name__}: {first[:200]}); "
            "the symbolic results stand alone",
            "",
            "",
            None,
            None,
            "check that onnxruntime/torch can execute every op of the model, or pass --no-probe",
        )
    ]
