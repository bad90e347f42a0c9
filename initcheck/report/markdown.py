"""Markdown for pull-request comments: verdict, findings with their fixes, the per-layer table folded away."""

from __future__ import annotations

import math

from initcheck.report.model import ModelResult, Report

_ICON = {"error": "🔴", "warning": "🟠", "info": "🔵"}


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def number(x) -> str:
    if x is None:
        return "-"
    if not math.isfinite(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.3g}"


def _counts(report: Report) -> str:
    return ", ".join(f"{report.count(s)} {s}" for s in ("error", "warning", "info"))


def _model(result: ModelResult) -> list[str]:
    if result.report is None:
        return [f"### `{result.model}`: ⛔ could not be analysed", "", f"> {_cell(result.error)}", ""]
    report = result.report
    verdict = "❌ fails" if result.failed else "✅ passes"
    lines = [f"### `{result.model}`: {verdict} `--fail-on {result.fail_on}` ({_counts(report)})", ""]
    extras = [f"config `{report.config}`"] if report.config else []
    extras += [f"{report.suppressed} suppressed by the config"] if report.suppressed else []
    states = [f.baseline for f in report.findings if f.baseline]
    if states or report.fixed:
        extras.append(
            f"baseline: {states.count('new')} new, {states.count('worsened')} worsened, {len(report.fixed)} fixed"
        )
    if extras:
        lines += ["_" + "; ".join(extras) + "_", ""]
    if report.findings:
        lines += ["| | code | layer | finding | fix |", "|---|---|---|---|---|"]
        for f in report.findings:
            note = f" (measured {f.measured:.3g})" if f.measured is not None else ""
            note += f" — intentional: {f.declared}" if f.declared else ""
            note += f" **[{f.baseline}]**" if f.baseline in ("new", "worsened") else ""
            lines.append(
                f"| {_ICON[f.severity]} {f.severity} | `{f.code}` | {_cell(f.scope or f.node or '-')} | "
                f"{_cell(f.message + note)} | {_cell(f.fix or '-')} |"
            )
        lines.append("")
    lines += [
        f"<details><summary>Per-layer table ({len(report.layers)} rows; depth {report.depth}, width "
        f"{report.width if report.width is not None else '-'})</summary>",
        "",
        "| # | layer | op | shape | K | fwd log10 | G | bwd log10 | K measured |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    grouped = {i for group in report.blocks for position in group.positions for i in position.rows}
    starts = {group.positions[0].rows[0]: group for group in report.blocks}
    for row in report.layers:
        for position in starts[row.index].positions if row.index in starts else []:
            lines.append(
                f"| {position.rows[0]}–{position.rows[-1]} | {_cell(position.label)} | {position.op} | "
                f"{_shape(report.layers[position.rows[0]])} | "
                f"{_span(position.K)} | {number(position.forward_log10)} | {_span(position.G)} | "
                f"{number(position.backward_log10)} | - |"
            )
        if row.index in grouped:
            continue
        lines.append(
            f"| {row.index} | {_cell(row.label)} | {row.op} | {_shape(row)} | {number(row.symbolic.K)} | "
            f"{number(row.forward_log10)} | {number(row.symbolic.G)} | {number(row.backward_log10)} | "
            f"{number(row.measured.K if row.measured else None)} |"
        )
    return lines + ["", "</details>", ""]


def _shape(row) -> str:
    return "x".join("?" if d is None else str(d) for d in row.shape) if row.shape else "?"


def _span(values: list[float] | None) -> str:
    """A repeated block's [min, max] across its blocks."""
    if not values:
        return "-"
    low, high = (number(v) for v in values)
    return low if low == high else f"{low}–{high}"


def render_markdown(results: list[ModelResult], version: str = "") -> str:
    failed = sum(1 for r in results if r.failed or r.report is None)
    lines = [f"## initcheck: {len(results) - failed} of {len(results)} model(s) pass", ""]
    for result in results:
        lines += _model(result)
    return "\n".join(lines).rstrip() + "\n"
