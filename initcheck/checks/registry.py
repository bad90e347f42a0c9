"""The check registry: every check is registered here with the codes it emits, as rules are registered by op.

A check is a function of one `CheckContext` returning findings. Checks of the `symbolic` stage run on the
symbolic pass alone; checks of the `probe` stage run after the empirical probe (or after it failed) and see
its measurements. `verify_catalogue` asserts that every code of the catalogue has exactly one check that
emits it; `run_checks` holds each check to its declared codes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from initcheck.codes import CODES

if TYPE_CHECKING:
    from initcheck.analysis.criticality import Susceptibility
    from initcheck.analysis.symbolic import SymbolicResult
    from initcheck.ir import Graph, Node
    from initcheck.report.model import Finding, LayerRow

STAGES = ("symbolic", "probe")


@dataclass(frozen=True)
class CheckContext:
    """Everything a check may read. The probe fields are set only for the `probe` stage."""

    graph: Graph
    result: SymbolicResult
    rows: list[LayerRow]
    depth: int = 0
    width: int | None = None
    chis: dict[Node, Susceptibility] = field(default_factory=dict)
    degree: int | None = None  # graph attention: the typical node degree the user gave (--degree)
    probe: Any = None  # the probe's result, when it ran
    probe_error: Exception | None = None  # why the probe could not run, when it failed


@dataclass(frozen=True)
class Check:
    name: str
    codes: tuple[str, ...]
    stage: str
    run: Callable[[CheckContext], list[Finding]]


CHECKS: dict[str, Check] = {}


def check(name: str, *codes: str, stage: str = "symbolic") -> Callable:
    """Register `fn(ctx) -> list[Finding]` as the check `name`, emitting exactly `codes`."""
    if stage not in STAGES:
        raise ValueError(f"check {name}: unknown stage {stage!r}")

    def register(fn: Callable[[CheckContext], list[Finding]]) -> Callable[[CheckContext], list[Finding]]:
        if name in CHECKS:
            raise ValueError(f"check {name!r} registered twice")
        unknown = [c for c in codes if c not in CODES]
        if unknown or not codes:
            raise ValueError(f"check {name!r}: codes {unknown or '(none)'} are not in the catalogue")
        CHECKS[name] = Check(name, tuple(codes), stage, fn)
        return fn

    return register


def emitters() -> dict[str, list[str]]:
    """code -> the checks that declare it."""
    out: dict[str, list[str]] = {code: [] for code in CODES}
    for c in CHECKS.values():
        for code in c.codes:
            out[code].append(c.name)
    return out


def verify_catalogue() -> None:
    """Every code has exactly one emitter and a complete `explain` entry; a gap is a bug, caught at import."""
    problems = [f"{code}: emitted by {names or 'no check'}" for code, names in emitters().items() if len(names) != 1]
    problems += [
        f"{c.code}: empty '{part}' in its explain entry"
        for c in CODES.values()
        for part in ("name", "severity", "summary", "formula", "fix", "thresholds")
        if not getattr(c, part)
    ]
    if problems:
        raise AssertionError("finding catalogue and checks disagree: " + "; ".join(problems))
