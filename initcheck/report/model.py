"""The report: plain data produced by analysis, consumed by reporters (which never compute)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("info", "warning", "error")
SCHEMA_VERSION = "1.1"


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


@dataclass
class Finding:
    code: str
    severity: str
    kind: str  # forward | backward | weights | coverage
    message: str
    node: str = ""
    scope: str = ""
    value: float | None = None
    threshold: float | None = None
    fix: str = ""
    fix_value: float | None = None
    details: dict[str, float | int | str] = field(default_factory=dict)  # further numbers of the finding, by name
    measured: float | None = None  # the probe's measurement of `value`, when it ran and the check has one
    declared: str = ""  # the reason, when the config declares this deviation intentional (then severity info)
    baseline: str | None = None  # new | worsened | unchanged when compared with a baseline, else None
    # how to read `measured` from the probe: (kind, value names...), see analysis.agreement.quote_measurements
    measure: tuple | None = field(default=None, repr=False, compare=False)


@dataclass
class LayerRow:
    """One row of the per-layer table: the last value of a layer (activations folded in)."""

    index: int
    node: str
    scope: str
    op: str
    source_op: str
    shape: list[int | None] | None
    fan_in: int | None
    fan_out: int | None
    weight_std: float | None
    target_std: float | None
    activation: str | None
    mean: float | None
    second_moment: float | None
    coherent: float | None
    gain_log10: float | None  # log10(K_out / K_in) of this row
    forward_log10: float | None  # log10(K / K_ref), K_ref = nearest upstream normalisation or input
    grad_second_moment: float | None  # G per element, unit-variance cotangent at every output
    backward_log10: float | None  # log10(E / E_ref), E = G * numel: gradient energy vs nearest downstream reference
    spread: float  # predicted relative instance-to-instance deviation of K at this width (sqrt of CV^2, §12)
    exact: bool
    grad_exact: bool
    status: str  # modeled | approximated | unsupported
    normalized_downstream: bool
    small_head: bool = False  # the last weighted layer before an output, and it shrinks K by itself (small logits)
    lead_in: bool = False  # a weightless op right before an output layer (dropout, a rescale): judged with the head
    tied_with: str | None = None  # the embedding whose table is this layer's weight (tied input/output embeddings)
    flags: list[str] = field(default_factory=list)
    phase_ratio: float | None = None
    chi_perp: float | None = None  # C_W <phi'^2>_K of this layer's activation in a plain chain (docs/theory.md §4)
    chi_par: float | None = None  # C_W d<phi^2>/dK
    value: str = ""  # the IR value this row reports
    # filled when the empirical probe ran
    measured_mean: float | None = None
    measured_K: float | None = None
    measured_G: float | None = None
    agreement: float | None = None  # K_sym / K_meas
    agrees: bool | None = None  # within ln 1.15 + 3 SE
    dead_fraction: float | None = None
    saturation: float | None = None
    cosine: float | None = None
    measured_phase_ratio: float | None = None

    @property
    def label(self) -> str:
        return self.scope or self.node


@dataclass
class ModelResult:
    """One model of a run: its report, or the one-line error that stopped it; the gate it is held to."""

    model: str
    report: Report | None
    error: str | None = None
    fail_on: str = "error"

    @property
    def failed(self) -> bool:
        return self.report is not None and self.report.fails(self.fail_on)


@dataclass
class Coverage:
    modeled: dict[str, int] = field(default_factory=dict)
    approximated: dict[str, int] = field(default_factory=dict)
    unsupported: dict[str, int] = field(default_factory=dict)


@dataclass
class Report:
    model: str
    producer: str
    opset: int | None
    mode: str  # eval | train
    inputs: dict[str, list[int]]
    depth: int
    width: int | None
    layers: list[LayerRow]
    findings: list[Finding]
    coverage: Coverage
    notes: list[str] = field(default_factory=list)
    all_nodes: bool = False
    probe: dict[str, Any] | None = None  # device, samples, runs, loss, cross-check, notes; None when not run
    instance_spread: float | None = None  # predicted CV^2 of the last hidden K between initialisations (§12)
    width_regime: str = ""  # near-infinite-width | effectively deep | deep for its width | overly deep
    config: str = ""  # the config file that applied ("" = none)
    suppressed: int = 0  # findings the config's ignore / severity "off" removed
    fixed: list[dict[str, Any]] = field(default_factory=list)  # baseline findings no longer raised

    def worst_severity(self) -> str | None:
        if not self.findings:
            return None
        return max((f.severity for f in self.findings), key=severity_rank)

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)

    def failing(self, fail_on: str) -> list[Finding]:
        """The findings that fail a gate at `fail_on` (info | warning | error | never); compared with a baseline,
        only new or worsened ones."""
        if fail_on == "never":
            return []
        return [
            f
            for f in self.findings
            if severity_rank(f.severity) >= severity_rank(fail_on) and f.baseline in (None, "new", "worsened")
        ]

    def fails(self, fail_on: str) -> bool:
        return bool(self.failing(fail_on))

    def to_dict(self) -> dict[str, Any]:
        data = {"schema_version": SCHEMA_VERSION, **asdict(self)}
        for finding in data["findings"]:
            del finding["measure"]
        data["summary"] = {s: self.count(s) for s in SEVERITIES}
        return data
