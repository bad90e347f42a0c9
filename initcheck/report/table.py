"""The per-layer table and summary (rich). Formatting only: every number comes from the Report."""

from __future__ import annotations

import math

from rich.console import Console, Group, JustifyMethod
from rich.table import Table
from rich.text import Text

from initcheck.report.model import BlockPosition, LayerRow, Report

_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def _num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    if not math.isfinite(x):
        return "inf" if x > 0 else "-inf"
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def _decades(x: float | None) -> Text:
    if x is None:
        return Text("-")
    text = _num(x, 2) if math.isfinite(x) else ("inf" if x > 0 else "-inf")
    size = abs(x)
    style = "red" if size >= 2 else "yellow" if size >= 1 else ""
    return Text(("+" if x > 0 and math.isfinite(x) else "") + text, style=style)


def _shape(row: LayerRow) -> str:
    return "x".join("?" if d is None else str(d) for d in row.shape) if row.shape is not None else "?"


def _fans(row: LayerRow) -> str:
    return f"{row.fan_in}/{row.fan_out}" if row.fan_in is not None else "-"


def _stds(row: LayerRow) -> str:
    return f"{_num(row.weight_std)}/{_num(row.target_std)}" if row.weight_std is not None else "-"


def _flags(row: LayerRow, flagged: dict[str, list[str]]) -> str:
    marks = list(flagged.get(row.node, []))
    if row.status == "unsupported":
        marks.append("unsupported")
    elif not row.symbolic.exact:
        marks.append("~")
    if row.uninformative:
        marks.append("±>2x")  # the ensemble value says little about this instance
    elif row.symbolic.K_bar >= 0.15:
        marks.append(f"±{row.symbolic.K_bar:.0%}")
    if row.normalized_downstream:
        marks.append("norm↓")
    if row.dead_fraction is not None and row.dead_fraction >= 0.05:
        marks.append(f"dead {row.dead_fraction:.0%}")
    if row.saturation is not None and row.saturation >= 0.05:
        marks.append(f"sat {row.saturation:.0%}")
    if row.cosine is not None and row.cosine >= 0.9:
        marks.append(f"cos {row.cosine:.2f}")
    return " ".join(marks)


def _agreement(row: LayerRow) -> Text:
    if row.agreement is None:
        return Text("-")
    text = f"x{1 / row.agreement:.2f}"
    return Text(text, style="" if row.agrees or not row.symbolic.exact else "red")


def layer_table(report: Report) -> Table:
    probed = report.probe is not None
    table = Table(title=f"initcheck: {report.model}", title_justify="left", header_style="bold", pad_edge=False)
    columns: list[tuple[str, JustifyMethod]] = [
        ("#", "right"),
        ("layer", "left"),
        ("op", "left"),
        ("shape", "left"),
        ("fan in/out", "right"),
        ("w std/target", "right"),
        ("mean", "right"),
        ("K", "right"),
    ]
    columns += [("K meas", "right"), ("meas/pred", "right")] if probed else []
    columns += [("fwd log10", "right"), ("G", "right")]
    columns += [("G meas", "right")] if probed else []
    columns += [("bwd log10", "right"), ("flags", "left")]
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=name in ("#", "shape"))
    flagged: dict[str, list[str]] = {}
    for f in report.findings:
        flagged.setdefault(f.node, []).append(f.code)
    grouped = {i for group in report.blocks for position in group.positions for i in position.rows}
    starts = {group.positions[0].rows[0]: group for group in report.blocks}
    for row in report.layers:
        if row.index in starts:
            for position in starts[row.index].positions:
                table.add_row(*_block_cells(position, report.layers, flagged, probed))
        if row.index in grouped:
            continue
        cells: list[str | Text] = [
            str(row.index),
            row.label,
            row.op,
            _shape(row),
            _fans(row),
            _stds(row),
            _num(row.symbolic.m),
            _num(row.symbolic.K),
        ]
        if probed:
            cells += [_num(row.measured.K if row.measured else None), _agreement(row)]
        cells += [_decades(row.forward_log10), _num(row.symbolic.G)]
        if probed:
            cells += [_num(row.measured.G if row.measured else None)]
        cells += [_decades(row.backward_log10), _flags(row, flagged)]
        table.add_row(*cells)
    return table


def _range(values: list[float] | None) -> str:
    if not values:
        return "-"
    low, high = values
    return _num(low) if _num(low) == _num(high) else f"{_num(low)}–{_num(high)}"


def _block_cells(position: BlockPosition, rows: list[LayerRow], flagged: dict, probed: bool) -> list[str | Text]:
    """One position of a repeated block: the first block's shape and weights, each number's range across blocks."""
    first = rows[position.rows[0]]
    codes = sorted({code for i in position.rows for code in flagged.get(rows[i].node, [])})
    span = f"{position.rows[0]}–{position.rows[-1]}"
    cells: list[str | Text] = [span, position.label, position.op, _shape(first), _fans(first), _stds(first)]
    cells += ["-", _range(position.K)]
    cells += ["-", "-"] if probed else []
    cells += [_decades(position.forward_log10), _range(position.G)]
    cells += ["-"] if probed else []
    return cells + [_decades(position.backward_log10), " ".join(codes + [f"×{len(position.rows)}"])]


def summary(report: Report) -> Group:
    lines = []
    counts = ", ".join(f"{report.count(s)} {s}" for s in ("error", "warning", "info"))
    lines.append(Text(f"findings: {counts}", style="bold"))
    for f in report.findings:
        where = f.scope or f.node
        line = Text(f"  {f.code} ", style=_STYLE[f.severity])
        line.append(f"[{f.severity}] {f.message}")
        if f.measured is not None:
            line.append(f" (measured: {f.measured:.3g})", style="cyan")
        if f.declared:
            line.append(f" (declared intentional: {f.declared})", style="green")
        if f.baseline in ("new", "worsened"):
            line.append(f" [{f.baseline}]", style="bold")
        if where:
            line.append(f"  @ {where}", style="dim")
        lines.append(line)
        if f.fix:
            lines.append(Text(f"      fix: {f.fix}", style="green"))
    cov = report.coverage
    n_mod, n_apx, n_uns = (sum(d.values()) for d in (cov.modeled, cov.approximated, cov.unsupported))
    lines.append(Text(f"op coverage: {n_mod} modeled, {n_apx} approximated, {n_uns} unsupported", style="bold"))
    if cov.approximated:
        lines.append(Text("  approximated: " + ", ".join(f"{k} ×{v}" for k, v in cov.approximated.items())))
    if cov.unsupported:
        lines.append(
            Text("  unsupported: " + ", ".join(f"{k} ×{v}" for k, v in cov.unsupported.items()), style="yellow")
        )
    width = report.width if report.width is not None else "-"
    inputs = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in report.inputs.items())
    regime = (
        f"; instance spread CV² {report.instance_spread:.2g} ({report.width_regime})"
        if report.instance_spread is not None
        else ""
    )
    lines.append(
        Text(f"depth {report.depth} weighted layers, median width {width}{regime}; mode {report.mode}; inputs {inputs}")
    )
    lines.append(
        Text(
            "K: second moment E[z^2]; fwd: log10 K/K_ref (nearest normalisation or input); "
            "G: gradient second moment, unit cotangent at outputs; ~ approximate; ±: expected instance-to-instance deviation at this width; norm↓ rescaled by a later norm",
            style="dim",
        )
    )
    if report.probe:
        p = report.probe
        check = (
            f"; torch form vs onnxruntime {p['max_relative_difference']:.1e}"
            if p.get("max_relative_difference") is not None
            else ""
        )
        lines.append(
            Text(
                f"probe: {p['samples']} samples in {p['runs']} runs on {p['device']}, backward seed "
                f"{p['loss']}{'; weights resampled per seed' if p['resampled_weights'] else ''}{check}"
            )
        )
        for note in p["notes"]:
            lines.append(Text(f"probe note: {note}", style="yellow"))
    for note in report.notes:
        lines.append(Text(f"note: {note}", style="dim"))
    return Group(*lines)


def make_console(color: str = "auto") -> Console:
    """The terminal's width on a TTY, a wide fixed width when piped. Colour: `always`, `never`, or `auto`: NO_COLOR
    set means none, FORCE_COLOR set means colour even when piped, else colour only on a terminal."""
    import os
    import sys

    tty = sys.stdout.isatty()
    if color == "auto":
        color = "never" if os.environ.get("NO_COLOR") else "always" if os.environ.get("FORCE_COLOR") or tty else "never"
    if color == "always":
        return Console(width=None if tty else 200, force_terminal=True, color_system="auto" if tty else "standard")
    return Console(width=None if tty else 200, color_system=None, force_terminal=tty, no_color=True)


def render_table(report: Report, console: Console) -> None:
    console.print(layer_table(report))
    console.print(summary(report))


def render_text(results, version: str = "", width: int = 200) -> str:
    """Plain text of every model's table and summary (for --output FILE.txt and non-terminal stdout)."""
    import os

    console = Console(record=True, width=width, file=open(os.devnull, "w"), color_system=None)  # noqa: SIM115
    render_results(results, console)
    return console.export_text()


def render_results(results, console: Console) -> None:
    for result in results:
        if result.report is None:
            console.print(Text(f"{result.model}: could not be analysed: {result.error}", style="bold red"))
            continue
        render_table(result.report, console)
        report = result.report
        if report.config or report.suppressed:
            console.print(
                Text(f"config: {report.config or '-'}; {report.suppressed} finding(s) suppressed", style="dim")
            )
        states = [f.baseline for f in report.findings if f.baseline]
        if states or report.fixed:
            console.print(
                Text(
                    f"baseline: {states.count('new')} new, {states.count('worsened')} worsened, "
                    f"{len(report.fixed)} fixed",
                    style="bold",
                )
            )
    if len(results) > 1:
        console.print(Text("summary:", style="bold"))
        for line in summary_lines(results):
            console.print(Text(line))


def summary_lines(results) -> list[str]:
    """One line per model: its counts and verdict."""
    lines = []
    for r in results:
        if r.report is None:
            lines.append(f"  {r.model}: ERROR {r.error.replace(r.model + ': ', '')}")
            continue
        counts = ", ".join(f"{r.report.count(s)} {s}" for s in ("error", "warning", "info"))
        lines.append(f"  {r.model}: {counts} -> {'FAIL' if r.failed else 'pass'} (--fail-on {r.fail_on})")
    return lines
