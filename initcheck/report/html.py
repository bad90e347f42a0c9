"""One self-contained HTML page for one or more models: the verdict and the findings with their fixes first, the
signal-propagation plot (inline SVG), the per-layer table (sortable by any column, filterable), op coverage and
the probe's details. Nothing is fetched when the page opens (no CDN, no font, no image outside the file), and the
same reports give the same bytes."""

from __future__ import annotations

import html
import math

from initcheck.report.markdown import number
from initcheck.report.model import ModelResult, Report

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1280px;color:#263238}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #cfd8dc;padding-bottom:4px;margin-top:36px}
.pass{color:#2e7d32}.fail{color:#c62828}.note{color:#546e7a}
.finding{border-left:4px solid #90a4ae;padding:4px 10px;margin:8px 0;background:#fafafa}
.error{border-color:#c62828}.warning{border-color:#ef6c00}.info{border-color:#1565c0}
.fix{color:#37474f}.code{font-family:ui-monospace,Menlo,monospace;font-weight:600}
table{border-collapse:collapse;font-size:12px;width:100%}
th,td{padding:3px 6px;border-bottom:1px solid #eceff1;text-align:right;white-space:nowrap}
th{cursor:pointer;background:#eceff1;position:sticky;top:0}
td.label,th.label,td.op{text-align:left}
input.filter{margin:8px 0;padding:4px 8px;width:320px}
.plot svg{max-width:100%;height:auto}
"""

# sorting (click a header; again to reverse) and filtering (rows whose text contains the query); no library
_SCRIPT = """
document.querySelectorAll("table.layers").forEach(function (table) {
  var body = table.tBodies[0];
  table.querySelectorAll("th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var up = th.dataset.order !== "up";
      th.dataset.order = up ? "up" : "down";
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[column].dataset.v, y = b.cells[column].dataset.v;
        var nx = parseFloat(x), ny = parseFloat(y);
        var order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
        return up ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
  var input = document.getElementById(table.id + "-filter");
  input.addEventListener("input", function () {
    var query = input.value.toLowerCase();
    Array.prototype.forEach.call(body.rows, function (row) {
      row.style.display = row.textContent.toLowerCase().indexOf(query) >= 0 ? "" : "none";
    });
  });
});
document.body.dataset.ready = "1";
"""


def render_html(results: list[ModelResult], version: str) -> str:
    sections = [_section(result, i) for i, result in enumerate(results)]
    title = "initcheck report" + (f": {html.escape(results[0].model)}" if len(results) == 1 else "")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{_STYLE}</style></head><body>"
        f'<h1>{title}</h1><p class="note">initcheck {html.escape(version)}; {len(results)} model(s)</p>'
        + "".join(sections)
        + f"<script>{_SCRIPT}</script></body></html>\n"
    )


def _section(result: ModelResult, index: int) -> str:
    name = html.escape(result.model)
    if result.report is None:
        return f'<h2>{name}</h2><p class="fail">could not be analysed: {html.escape(result.error or "")}</p>'
    report = result.report
    verdict = (
        f'<span class="fail">fails --fail-on {result.fail_on}</span>'
        if result.failed
        else f'<span class="pass">passes --fail-on {result.fail_on}</span>'
    )
    counts = ", ".join(f"{report.count(s)} {s}" for s in ("error", "warning", "info"))
    parts = [f'<section id="model-{index}"><h2>{name}</h2><p>{verdict} ({counts})</p>']
    parts += [_finding(f) for f in report.findings]
    parts.append(f'<div class="plot">{_plot(report)}</div>')
    parts.append(_table(report, f"layers-{index}"))
    parts.append(_coverage(report))
    parts.append(_probe(report))
    if report.notes:
        parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    return "".join(parts) + "</section>"


def _finding(f) -> str:
    measured = f" (measured {f.measured:.3g})" if f.measured is not None else ""
    declared = f" <em>intentional: {html.escape(f.declared)}</em>" if f.declared else ""
    return (
        f'<div class="finding {f.severity}"><span class="code">{f.code}</span> {f.severity} at '
        f"<b>{html.escape(f.scope or f.node or '-')}</b>: {html.escape(f.message)}{measured}{declared}"
        f'<div class="fix">fix: {html.escape(f.fix or "-")}</div></div>'
    )


def _plot(report: Report) -> str:
    try:
        from initcheck.report.plot import svg_text

        return svg_text(report)
    except Exception as e:  # matplotlib missing: the page says how to get the plot
        return f'<p class="note">no plot: {html.escape(str(e))}</p>'


_COLUMNS = ("#", "layer", "op", "shape", "K", "K meas", "meas/pred", "G", "G meas", "fwd log10", "bwd log10", "flags")


def _table(report: Report, table_id: str) -> str:
    head = "".join(f'<th class="{"label" if c in ("layer", "op") else ""}">{c}</th>' for c in _COLUMNS)
    rows = []
    for row in report.layers:
        m = row.measured
        ratio = m.K / row.symbolic.K if m is not None and row.symbolic.K else None
        cells = [
            (row.index, str(row.index), ""),
            (row.label, row.label, "label"),
            (row.op, row.op, "op"),
            ("x".join("?" if d is None else str(d) for d in row.shape or []), None, ""),
            (row.symbolic.K, None, ""),
            (m.K if m else None, None, ""),
            (ratio, None, ""),
            (row.symbolic.G, None, ""),
            (m.G if m else None, None, ""),
            (row.forward_log10, None, ""),
            (row.backward_log10, None, ""),
            (" ".join(row.flags), None, ""),
        ]
        tds = "".join(
            f'<td class="{cls}" data-v="{html.escape(_sort_key(v))}">{html.escape(text if text is not None else v if isinstance(v, str) else number(v))}</td>'
            for v, text, cls in cells
        )
        rows.append(f"<tr>{tds}</tr>")
    return (
        f'<h3>Layers ({len(report.layers)})</h3><input class="filter" id="{table_id}-filter" '
        f'placeholder="filter rows (layer, op, flag)"><table class="layers" id="{table_id}"><thead><tr>{head}'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _sort_key(x) -> str:
    if x is None:
        return ""
    if isinstance(x, float) and not math.isfinite(x):
        return "1e308" if x > 0 else "-1e308"
    return str(x)


def _coverage(report: Report) -> str:
    def line(name: str, ops: dict[str, int]) -> str:
        listed = ", ".join(f"{html.escape(op)} x{n}" for op, n in ops.items()) or "-"
        return f"<li>{name}: {listed}</li>"

    c = report.coverage
    return (
        "<h3>Op coverage</h3><ul>"
        + line("modeled", c.modeled)
        + line("approximated", c.approximated)
        + line("unsupported", c.unsupported)
        + "</ul>"
    )


def _probe(report: Report) -> str:
    if report.probe is None:
        return '<h3>Probe</h3><p class="note">the probe did not run (symbolic pass only)</p>'
    p = report.probe
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in p.get("notes", []))
    return (
        f"<h3>Probe</h3><p>{html.escape(str(p.get('device')))}, {p.get('samples')} samples in {p.get('runs')} "
        f"runs, backward seed {html.escape(str(p.get('loss')))}</p>" + (f"<ul>{notes}</ul>" if notes else "")
    )
