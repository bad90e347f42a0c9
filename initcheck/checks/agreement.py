"""The probe's verdicts on the symbolic pass (docs/theory.md §13): rows that disagree beyond their error bars
(IC401), a torch form of an ONNX graph that differs from onnxruntime (IC402), a probe that could not run (IC403).
The numbers are computed in `initcheck.analysis.agreement`; these checks only judge them."""

from __future__ import annotations

from initcheck.checks.registry import CheckContext, check
from initcheck.codes import limit
from initcheck.report.model import Finding


@check("agreement", "IC401", stage="probe")
def _agreement_check(ctx: CheckContext) -> list[Finding]:
    """Every measured row against its own stated bar; rows whose bar is wider than 2x are not judged (marked)."""
    findings = []
    for row in ctx.rows:
        if row.agrees is not False or not row.agreement or row.measured is None or row.uninformative:
            continue
        why = (
            "so the model breaks an assumption of the symbolic pass (e.g. correlated branches such as x + x, or "
            "weights correlated with their inputs)"
            if row.symbolic.exact
            else "so an approximation at or above this layer is off by more than its calibrated bar"
        )
        findings.append(
            Finding(
                "IC401",
                "warning",
                "probe",
                f"measured K {row.measured.K:.4g} vs predicted {row.symbolic.K:.4g} (x{1 / row.agreement:.3g}) at "
                f"'{row.label}' ({row.op}): beyond its error bar (±{row.symbolic.K_bar:.0%}) and the sampling "
                f"error, {why}",
                row.node,
                row.scope,
                row.measured.K / row.symbolic.K,
                limit("IC401", "tolerance"),
                "trust the measured numbers for this layer and the ones after it",
            )
        )
    return findings


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
