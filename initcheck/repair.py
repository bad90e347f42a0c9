"""`initcheck fix`: the repairs the checks attached to their findings, applied to a copy of the model, and the proof
that they worked (the copy analysed again).

The plan acts on findings of severity warning or error that the configuration neither declares nor ignores
(`--only` / `--skip` narrow it further; information acts only when named in `--only`). Each finding's repair lists
the stored tensors to change; a tensor is changed once, by the first finding that asks (a later finding on the
same tensor is left to the proof). A finding whose repair is `unfixable` is reported with the reason: only a
change to the model helps there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from initcheck.report.model import Edit, Finding, Report, severity_rank

ACTING = "warning"  # the least severity a fix acts on: information is left as it is

# why no change of the stored weights fixes a finding of these codes: only a change to the model does
NEEDS_A_MODEL_CHANGE = {
    "IC301": "an op the analysis does not model: nothing to rescale from it",
    "IC302": "an internal error of the analysis: please report it",
    "IC401": "prediction and measurement disagree: a finding about the analysis, not the weights",
    "IC402": "the probe's two runtimes disagree: a finding about the probe, not the weights",
    "IC403": "the probe could not run: nothing to rescale from it",
    "IC501": "the kernel does not tile the stride (a ConvTranspose checkerboard): use a kernel divisible by the "
    "stride, or resize then convolve",
    "IC505": "depth against width is the architecture's: a wider or shallower network, or normalisations",
    "IC507": "inherent to inverted dropout: keep a normalisation after dropout-heavy blocks",
    "IC513": "inputs converge along the chain: a normalisation, or the chain's bias variance C_b",
    "IC515": "the strided kernel does not tile its stride: a kernel divisible by the stride",
    "IC516": "the stream needs a normalisation at its end (or its post-LN placement changed)",
    "IC517": "the logits' sharpness follows each node's degree: scale them per node in the model",
}


@dataclass(frozen=True)
class Planned:
    finding: Finding
    edits: tuple[Edit, ...]  # what this finding's repair changes (empty: unfixable or left alone)
    why: str = ""  # unfixable, or why it was left alone
    second: bool = False  # planned on the model as the resets left it (a second round)


@dataclass
class FixPlan:
    acted: list[Planned] = field(default_factory=list)  # findings with tensors to change
    unfixable: list[Planned] = field(default_factory=list)  # findings no change of the weights fixes
    left: list[Planned] = field(default_factory=list)  # findings the plan leaves alone, with why
    deferred: list[Planned] = field(default_factory=list)  # scale findings planned again after the resets

    @property
    def edits(self) -> list[Edit]:
        """Every edit of every acted finding, one per stored tensor."""
        return [s for p in self.acted for s in p.edits if s.tensor]


def plan_fixes(
    report: Report, only: set[str] | None = None, skip: set[str] | None = None, second: bool = False
) -> FixPlan:
    """What to change. Resets (a zero scale set to 1, a broken weight drawn afresh, a bias zeroed, a mean removed)
    go first: the scale findings downstream of a reset were measured on the broken model, so they wait for a
    second round planned on the model as the resets leave it (`second`)."""
    plan = _plan(report, only, skip, second)
    if second or not any(e.how != "scale" for e in plan.edits):
        return plan
    waiting = [
        p for p in plan.acted if p.finding.kind in ("forward", "backward") and all(e.how == "scale" for e in p.edits)
    ]
    plan.acted = [p for p in plan.acted if p not in waiting]
    plan.deferred = [Planned(p.finding, (), "planned again once the resets above are applied") for p in waiting]
    return plan


def _plan(report: Report, only: set[str] | None, skip: set[str] | None, second: bool) -> FixPlan:
    plan, taken = FixPlan(), set[str | None]()
    # deliberate choices no repair may undo: a small output layer (small logits at init) keeps its scale
    weighted = [r for r in report.layers if r.weight_tensor]
    protected = {weighted[-1].weight_tensor} if weighted and weighted[-1].small_head else set()
    for finding in report.findings:
        why = _left_alone(finding, only, skip)
        if why:
            plan.left.append(Planned(finding, (), why))
            continue
        repair = finding.repair
        if repair is None or not repair.edits:
            why = repair.unfixable if repair else NEEDS_A_MODEL_CHANGE.get(finding.code, "no automatic repair yet")
            plan.unfixable.append(Planned(finding, (), why))
            continue
        kept = [s for s in repair.edits if not (s.how == "scale" and s.tensor in protected)]
        fresh = tuple(s for s in kept if s.tensor not in taken and not _no_change(s))
        taken.update(s.tensor for s in fresh)
        # a finding whose weights an earlier finding rescales already is acted on by that fix: the proof checks it
        why = "" if fresh else "its weights are rescaled for a finding above"
        if len(kept) < len(repair.edits):
            why = (why + "; " if why else "") + "the small output layer is left as it is (small logits are deliberate)"
        plan.acted.append(Planned(finding, fresh, why, second))
    return plan


def merged(first: FixPlan, second: FixPlan) -> FixPlan:
    """Both rounds as one plan: what the second round found beyond the first is acted on or reported too."""
    seen = {(p.finding.code, p.finding.scope or p.finding.node) for p in first.acted + first.unfixable + first.left}
    new = [p for p in second.unfixable if (p.finding.code, p.finding.scope or p.finding.node) not in seen]
    return FixPlan(first.acted + second.acted, first.unfixable + new, first.left, first.deferred)


def _no_change(edit: Edit) -> bool:
    return edit.how == "scale" and math.isclose(edit.factor, 1.0)


def _left_alone(finding: Finding, only: set[str] | None, skip: set[str] | None) -> str:
    if finding.declared:
        return f"declared in the configuration: {finding.declared}"
    if severity_rank(finding.severity) < severity_rank(ACTING) and (only is None or finding.code not in only):
        return "information only (name it in --only to act on it)"
    if only is not None and finding.code not in only:
        return "not in --only"
    if skip is not None and finding.code in skip:
        return "--skip"
    return ""


@dataclass(frozen=True)
class Outcome:
    """One acted-on finding after the fix: gone, or still there (with its value then)."""

    finding: Finding
    after: Finding | None


@dataclass(frozen=True)
class ChangedLayer:
    """A layer whose weights the fix changed: its K and G before and after, and the probe's after (if it ran)."""

    label: str
    K_before: float
    K_after: float
    G_before: float | None
    G_after: float | None
    K_measured: float | None
    G_measured: float | None


@dataclass
class Proof:
    outcomes: list[Outcome]  # the findings the fix acted on
    introduced: list[Finding]  # warnings or errors the repaired model has and the original had not
    rows: list[ChangedLayer]
    others: list[Outcome] = field(default_factory=list)  # the unfixable ones: gone as a consequence, or still there

    @property
    def passed(self) -> bool:
        return all(o.after is None for o in self.outcomes) and not self.introduced


def prove(plan: FixPlan, before: Report, after: Report) -> Proof:
    """Each acted-on finding must be gone from the repaired model's report, and no warning or error may be new."""

    def key(f: Finding) -> tuple[str, str]:
        return f.code, f.scope or f.node

    later = {key(f): f for f in after.findings if severity_rank(f.severity) >= severity_rank(ACTING)}
    earlier = {key(f) for f in before.findings}
    acted = {key(p.finding): p.finding for p in plan.deferred + plan.acted if key(p.finding) in earlier}
    outcomes = [Outcome(f, later.get(k)) for k, f in acted.items()]
    others = [Outcome(p.finding, later.get(key(p.finding))) for p in plan.unfixable]
    introduced = [f for k, f in later.items() if k not in earlier]
    changed = {s.layer for p in plan.acted for s in p.edits}
    rows = [
        ChangedLayer(
            a.label,
            a.symbolic.K,
            b.symbolic.K,
            a.symbolic.G,
            b.symbolic.G,
            b.measured.K if b.measured else None,
            b.measured.G if b.measured else None,
        )
        for a, b in zip(before.layers, after.layers)
        if a.label in changed
    ]
    return Proof(outcomes, introduced, rows, others)


def init_code(plan: FixPlan) -> list[str]:
    """PyTorch lines that give the same weights from the model's own init (`model` is the user's module); none for
    tensors an exporter named (`onnx::MatMul_19` is no parameter of the source module)."""
    lines = []
    for planned in plan.acted:
        for s in planned.edits:
            if s.tensor is None or "::" in s.tensor or s.tensor.startswith(("onnx", "val_")):
                continue
            parameter = f"model.get_parameter({s.tensor!r})"
            if s.how == "fill":
                lines.append(f"torch.nn.init.constant_({parameter}, {s.value:g})")
            elif s.how == "center":
                lines.append(f"{parameter}.data.sub_({parameter}.data.mean())")
            elif s.how.startswith("icnr"):
                phases = int(s.value or 1) ** 2
                copies = f"k.repeat_interleave({phases}, 0)" if s.how == "icnr" else f"k.repeat({phases}, 1, 1, 1)"
                lines.append(
                    f"k = torch.randn({parameter}.shape[0] // {phases}, *{parameter}.shape[1:]) * {s.std or 0.0:.4g}; "
                    f"{parameter}.data.copy_({copies})"
                )
            elif s.how == "normal" or (s.std is not None and planned.finding.kind in ("forward", "backward")):
                std = s.value if s.how == "normal" else (s.std or 0.0) * s.factor
                lines.append(f"torch.nn.init.normal_({parameter}, std={std:.4g})")
            else:
                lines.append(f"{parameter}.data.mul_({s.factor:.4g})")
    return lines


@dataclass
class FixResult:
    plan: FixPlan
    before: Report
    after: Report | None = None  # None on a dry run or when there is nothing to fix
    proof: Proof | None = None
    model: object = None  # the repaired module (live modules)
    code: list[str] = field(default_factory=list)  # PyTorch init code giving the same weights
