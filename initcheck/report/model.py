"""The report: plain data produced by analysis, consumed by reporters (which never compute)."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any

from initcheck.moments import Estimate

SEVERITIES = ("info", "warning", "error")
SCHEMA_VERSION = "1.1"


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


@dataclass
class Finding:
    code: str
    severity: str
    kind: str  # the finding's family, one word: forward | backward | weights | coverage | probe | residual | ...
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
    # how the probe measures `value`, when it runs (analysis.agreement.with_quotes fills `measured` from it)
    measure: Measure | None = field(default=None, repr=False, compare=False)
    repair: Repair | None = field(default=None, repr=False, compare=False)  # what `initcheck fix` would do


@dataclass(frozen=True)
class Edit:
    """One stored tensor `initcheck fix` changes: the layer (its table label), the tensor, and how:
    scale (multiply by `factor`), fill (set every entry to `value`), center (subtract the mean), normal (draw
    N(0, value^2) afresh) or icnr / icnr_dcr (one kernel per output channel copied to the `value` x `value`
    sub-pixel positions); draws are seeded by the tensor's name. `std` is the weight's std now."""

    layer: str
    tensor: str | None
    factor: float = 1.0
    std: float | None = None
    how: str = "scale"
    value: float | None = None

    def describe(self) -> str:
        if self.how == "fill":
            return f"set every entry of {self.tensor} (layer '{self.layer}') to {self.value:g}"
        if self.how == "center":
            return f"subtract the mean from {self.tensor} (layer '{self.layer}')"
        if self.how == "normal":
            return f"re-initialise {self.tensor} (layer '{self.layer}') with N(0, {self.value:.3g}^2)"
        if self.how.startswith("icnr"):
            return f"ICNR-initialise {self.tensor} (layer '{self.layer}'): one kernel per output channel for its {self.value:g}x{self.value:g} sub-pixels"
        std = f", std {self.std:.3g} -> {self.std * self.factor:.3g}" if self.std else ""
        return f"multiply {self.tensor} (layer '{self.layer}') by {self.factor:.4g}{std}"


@dataclass(frozen=True)
class Repair:
    """What `initcheck fix` does about a finding: the edits of stored tensors; `unfixable` says why no edit of the
    weights can fix it (then only a change to the model helps)."""

    edits: tuple[Edit, ...] = ()
    unfixable: str = ""


@dataclass(frozen=True)
class Measure:
    """What the probe measures for a finding's number, over the named values:
    K_ratio (a, b): K_a / K_b; G_energy_ratio (a, b): G_a numel_a / (G_b numel_b); phase_ratio (a): the largest
    over the smallest per-phase K; spread (a): CV^2 of K across weight draws; cosine (a): mean cosine similarity
    between samples."""

    kind: str
    values: tuple[str, ...]


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
    symbolic: Estimate  # the prediction for this row's value; its K_bar is the row's stated error bar
    coherent: float | None
    gain_log10: float | None  # log10(K_out / K_in) of this row
    forward_log10: float | None  # log10(K / K_ref), K_ref = nearest upstream normalisation or input
    backward_log10: float | None  # log10(E / E_ref), E = G * numel: gradient energy vs nearest downstream reference
    spread: float  # predicted relative instance-to-instance deviation of K at this width (sqrt of CV^2, §12)
    uninformative: bool  # the stated error bar is wider than 2x: the ensemble value says little about this instance
    status: str  # modeled | approximated | unsupported
    normalized_downstream: bool
    small_head: bool = False  # the last weighted layer before an output, and it shrinks K by itself (small logits)
    lead_in: bool = False  # a weightless op right before an output layer (dropout, a rescale): judged with the head
    tied_with: str | None = None  # the embedding whose table is this layer's weight (tied input/output embeddings)
    weight_tensor: str | None = None  # the stored tensor (state-dict key, ONNX initializer) holding the weight
    phases: list[list[float]] | None = None  # up-sampling: predicted K per output phase, as the s_h x s_w grid
    flags: list[str] = field(default_factory=list)
    phase_ratio: float | None = None
    chi_perp: float | None = None  # C_W <phi'^2>_K of this layer's activation in a plain chain (docs/theory.md §4)
    chi_par: float | None = None  # C_W d<phi^2>/dK
    value: str = ""  # the IR value this row reports
    # filled when the empirical probe ran
    measured: Estimate | None = None  # the measurement of the same value
    agreement: float | None = None  # K_sym / K_meas
    agrees: bool | None = None  # within the two error bars (analysis.agreement)
    grad_agreement: float | None = None  # G_sym / G_meas
    grad_agrees: bool | None = None  # within the two gradient error bars
    dead_fraction: float | None = None
    saturation: float | None = None
    cosine: float | None = None
    measured_phase_ratio: float | None = None

    @property
    def label(self) -> str:
        return self.scope or self.node

    def to_dict(self) -> dict[str, Any]:
        """The row as the JSON report has it since schema 1.0: flat, prediction and measurement side by side."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        sym, meas = fields.pop("symbolic"), fields.pop("measured")
        flat = {
            "mean": sym.m,
            "second_moment": sym.K,
            "grad_second_moment": sym.G,
            "exact": sym.exact,
            "grad_exact": sym.grad_exact,
            "measured_mean": meas.m if meas else None,
            "measured_K": meas.K if meas else None,
            "measured_G": meas.G if meas else None,
            "error_bar": sym.K_bar,
            "grad_error_bar": sym.G_bar,
        }
        return {name: flat[name] if name in flat else fields[name] for name in _ROW_KEYS}


# the JSON row's keys in their published order (report/schema.json)
_ROW_KEYS = (
    "index node scope op source_op shape fan_in fan_out weight_std target_std activation mean second_moment coherent "
    "gain_log10 forward_log10 grad_second_moment backward_log10 spread exact grad_exact status normalized_downstream "
    "small_head lead_in tied_with flags phase_ratio chi_perp chi_par value measured_mean measured_K measured_G "
    "agreement agrees dead_fraction saturation cosine measured_phase_ratio error_bar uninformative "
    "weight_tensor phases grad_error_bar grad_agreement grad_agrees"  # additive to schema 1.1
).split()


@dataclass(frozen=True)
class BlockPosition:
    """One position of a repeated block: its rows (one per block) and each number's range across the blocks."""

    label: str  # prefix.[first-last].rest
    op: str
    rows: list[int]  # table row indices, one per block
    K: list[float]  # [min, max]
    G: list[float] | None  # [min, max] where every block has one
    forward_log10: float | None  # the largest in magnitude
    backward_log10: float | None


@dataclass(frozen=True)
class BlockGroup:
    prefix: str  # e.g. model.layers
    first: int  # first and last block index
    last: int
    positions: list[BlockPosition]


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
    inputs: dict[str, list[int | None]]
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
    blocks: list[BlockGroup] = field(default_factory=list)  # repeated blocks the table shows grouped

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

    def plot(self, path=None):
        """The signal-propagation figure (matplotlib's Figure), or, given a .png/.svg path, that file written."""
        from initcheck.report import plot

        if path is None:
            return plot.figure(self)
        plot.save(self, path)
        return None

    def to_dict(self) -> dict[str, Any]:
        data = {"schema_version": SCHEMA_VERSION, **asdict(self)}
        data["layers"] = [row.to_dict() for row in self.layers]
        for finding in data["findings"]:
            del finding["measure"], finding["repair"]
        data["summary"] = {s: self.count(s) for s in SEVERITIES}
        return data
