"""`initcheck fix`: the plan, the repaired model written, and the proof, printed (the computing is in repair.py)."""

from __future__ import annotations

import sys

from initcheck.errors import EXIT_FINDINGS, EXIT_OK
from initcheck.report.markdown import number


def run_fix(args) -> int:
    from initcheck.api import fix_with
    from initcheck.cli_analyze import _config
    from initcheck.config import parse_shape
    from initcheck.options import resolve

    options = resolve(
        _config(args.model, args),
        shapes=dict(parse_shape(s) for s in args.input),
        arch=args.arch,
        trust_pickle=args.trust_pickle,
        probe=False if args.no_probe else None,
        model=args.model,
    )
    if options.probe_skipped:
        print(f"initcheck: {options.probe_skipped}", file=sys.stderr)
    only = {c.upper() for c in args.only} or None
    skip = {c.upper() for c in args.skip} or None
    result = fix_with(args.model, options, None, args.output, only, skip, args.dry_run)
    _print(result, args)
    if result.proof is None:
        return EXIT_OK
    return EXIT_OK if result.proof.passed else EXIT_FINDINGS


def _print(result, args) -> None:
    plan = result.plan
    target = "(dry run: nothing written)" if args.dry_run else f"-> {args.output}" if plan.edits else ""
    print(f"initcheck fix: {args.model} {target}".rstrip())
    if not plan.edits:
        print("\nnothing to change: no warning or error here has a repair of its weights")
    for planned in plan.acted:
        f = planned.finding
        again = "then, planned on the model as the resets left it: " if planned.second else ""
        print(f"\n{again}{f.code} {f.severity} at {_where(f)}: {_short(f.message)}")
        if planned.why:
            print(f"  {planned.why}")
        for s in planned.edits:
            print(f"  {s.describe()}")
    for title, planned_list in (("no change of the weights fixes these", plan.unfixable), ("left alone", plan.left)):
        if planned_list:
            print(f"\n{title}:")
            for planned in planned_list:
                print(
                    f"  {planned.finding.code} {planned.finding.severity} at {_where(planned.finding)}: {planned.why}"
                )
    if result.code:
        print("\nthe same in your PyTorch source (model = your module):")
        for line in result.code:
            print(f"  {line}")
    if result.proof is not None:
        _print_proof(result.proof)


def _print_proof(proof) -> None:
    print("\nproof (the repaired model analysed again):")
    for o in proof.outcomes:
        state = "fixed" if o.after is None else f"still there ({number(o.after.value)})"
        print(f"  {o.finding.code} at {_where(o.finding)}: {number(o.finding.value)} -> {state}")
    for o in proof.others:
        state = "gone with the fix" if o.after is None else "still there: needs a change to the model"
        print(f"  {o.finding.code} at {_where(o.finding)} (not changed): {state}")
    for f in proof.introduced:
        print(f"  NEW {f.code} {f.severity} at {_where(f)}: {_short(f.message)}")
    if proof.rows:
        measured = any(row.K_measured is not None for row in proof.rows)
        extra = f" {'K meas.':>10s} {'G meas.':>10s}" if measured else ""
        print(f"\n  {'layer':40s} {'K before':>10s} {'K after':>10s} {'G before':>10s} {'G after':>10s}{extra}")
        for r in proof.rows:
            tail = f" {number(r.K_measured):>10s} {number(r.G_measured):>10s}" if measured else ""
            values = (r.K_before, r.K_after, r.G_before, r.G_after)
            print(f"  {r.label[:40]:40s}" + "".join(f" {number(v):>10s}" for v in values) + tail)
    verdict = "passed: every finding it acted on is gone, nothing new" if proof.passed else "FAILED"
    print(f"\nproof {verdict}")


def _where(finding) -> str:
    return f"'{finding.scope or finding.node}'"


def _short(message: str) -> str:
    return message if len(message) <= 160 else message[:157] + "..."
