"""`initcheck fix`: the repairs the checks attached to their findings, applied to a copy of the model, and the proof
that they worked (the copy analysed again).

The plan acts on findings of severity warning or error that the configuration neither declares nor ignores
(`--only` / `--skip` narrow it further). Each finding's repair lists the stored weights to multiply; a tensor is
rescaled once, by the first finding that asks (a later finding on the same tensor is left to the proof). A
finding whose repair is `unfixable` is reported with the reason: only a change to the model helps there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from initcheck.report.model import Finding, Report, Scale, severity_rank

ACTING = "warning"  # the least severity a fix acts on: information is left as it is


@dataclass(frozen=True)
class Planned:
    finding: Finding
    scales: tuple[Scale, ...]  # what this finding's repair rescales (empty: unfixable or left alone)
    why: str = ""  # unfixable, or why it was left alone


@dataclass
class FixPlan:
    acted: list[Planned] = field(default_factory=list)  # findings with weights to rescale
    unfixable: list[Planned] = field(default_factory=list)  # findings no rescaling fixes
    left: list[Planned] = field(default_factory=list)  # findings the plan leaves alone, with why

    @property
    def scales(self) -> dict[str, float]:
        """Stored tensor -> factor, over every acted finding."""
        return {s.tensor: s.factor for p in self.acted for s in p.scales if s.tensor}


def plan_fixes(report: Report, only: set[str] | None = None, skip: set[str] | None = None) -> FixPlan:
    plan, taken = FixPlan(), set[str | None]()
    for finding in report.findings:
        why = _left_alone(finding, only, skip)
        if why:
            plan.left.append(Planned(finding, (), why))
            continue
        repair = finding.repair
        if repair is None or not repair.scales:
            plan.unfixable.append(Planned(finding, (), repair.unfixable if repair else "no automatic repair yet"))
            continue
        fresh = tuple(s for s in repair.scales if s.tensor not in taken and not math.isclose(s.factor, 1.0))
        taken.update(s.tensor for s in fresh)
        # a finding whose weights an earlier finding rescales already is acted on by that fix: the proof checks it
        plan.acted.append(Planned(finding, fresh, "" if fresh else "its weights are rescaled for a finding above"))
    return plan


def _left_alone(finding: Finding, only: set[str] | None, skip: set[str] | None) -> str:
    if finding.declared:
        return f"declared in the configuration: {finding.declared}"
    if severity_rank(finding.severity) < severity_rank(ACTING):
        return "information only"
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


@dataclass
class Proof:
    outcomes: list[Outcome]  # the findings the fix acted on
    introduced: list[Finding]  # warnings or errors the repaired model has and the original had not
    rows: list[tuple[str, float, float, float | None, float | None]]  # label, K before, after, G before, after
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
    outcomes = [Outcome(p.finding, later.get(key(p.finding))) for p in plan.acted]
    others = [Outcome(p.finding, later.get(key(p.finding))) for p in plan.unfixable]
    introduced = [f for k, f in later.items() if k not in earlier]
    changed = {s.layer for p in plan.acted for s in p.scales}
    rows = [
        (a.label, a.symbolic.K, b.symbolic.K, a.symbolic.G, b.symbolic.G)
        for a, b in zip(before.layers, after.layers)
        if a.label in changed
    ]
    return Proof(outcomes, introduced, rows, others)


def init_code(plan: FixPlan) -> list[str]:
    """PyTorch lines that give the same weights from the model's own init (`model` is the user's module); none for
    tensors an exporter named (`onnx::MatMul_19` is no parameter of the source module)."""
    lines = []
    for planned in plan.acted:
        for s in planned.scales:
            if s.tensor is None or "::" in s.tensor or s.tensor.startswith(("onnx", "val_")):
                continue
            if s.std is not None and planned.finding.kind in ("forward", "backward"):
                lines.append(f"torch.nn.init.normal_(model.get_parameter({s.tensor!r}), std={s.std * s.factor:.4g})")
            else:
                lines.append(f"model.get_parameter({s.tensor!r}).data.mul_({s.factor:.4g})")
    return lines


@dataclass
class FixResult:
    plan: FixPlan
    before: Report
    after: Report | None = None  # None on a dry run or when there is nothing to fix
    proof: Proof | None = None
    model: object = None  # the repaired module (live modules)
    code: list[str] = field(default_factory=list)  # PyTorch init code giving the same weights
