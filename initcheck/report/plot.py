"""Signal-propagation plots: per layer in table order, the forward second moment K and the gradient's G on a log
scale, predicted (a line, with its stated error bar as a band) beside measured (points with their standard
error), normalisations and residual merges marked, and findings annotated at their layer.

matplotlib is an optional extra (`pip install 'initcheck[plot]'`); only this module imports it, and only when a
plot is asked for. The plot draws the report's numbers; it computes nothing but their logarithms.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from initcheck.errors import UsageError
from initcheck.ir import NORMALIZATIONS
from initcheck.report.model import Report, severity_rank

LN10 = math.log(10)
COLORS = {"error": "#c62828", "warning": "#ef6c00", "info": "#1565c0"}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: files only
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("plots need matplotlib: pip install 'initcheck[plot]'") from None
    matplotlib.rcParams["svg.hashsalt"] = "initcheck"  # the same report gives the same SVG, byte for byte
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: searchable, and smaller
    return plt


def _log10(x: float | None) -> float:
    return math.log10(x) if x is not None and x > 0 and math.isfinite(x) else math.nan


def figure(report: Report):
    """The figure: K on top, G below, one x position per table row."""
    plt = _pyplot()
    rows = report.layers
    x = list(range(len(rows)))
    maps = [r for r in rows if r.phases][:4]
    width = max(8.0, min(0.12 * len(rows), 24.0))
    fig = plt.figure(figsize=(width, 7.5 + (2.2 if maps else 0.0)), layout="constrained")
    grid = fig.add_gridspec(3 if maps else 2, 1, height_ratios=[3, 3, 1.6] if maps else [1, 1])
    top = fig.add_subplot(grid[0])
    bottom = fig.add_subplot(grid[1], sharex=top)
    for axis, quantity, label in ((top, "K", "log10 K (forward second moment)"), (bottom, "G", "log10 G (gradient)")):
        predicted = [_log10(getattr(r.symbolic, quantity)) for r in rows]
        axis.plot(x, predicted, color="#37474f", linewidth=1.4, label="predicted", gid=f"predicted-{quantity}")
        # the stated error bars, in ln units: ± bar / ln 10 decades
        bars = [getattr(r.symbolic, f"{quantity}_bar") / LN10 for r in rows]
        axis.fill_between(
            x,
            [p - b for p, b in zip(predicted, bars)],
            [p + b for p, b in zip(predicted, bars)],
            color="#90a4ae",
            alpha=0.35,
            linewidth=0,
            label="predicted error bar",
            gid=f"band-{quantity}",
        )
        measured = [(i, _log10(getattr(r.measured, quantity)), r.measured) for i, r in enumerate(rows) if r.measured]
        measured = [(i, v, m) for i, v, m in measured if math.isfinite(v)]
        if measured:
            errors = [getattr(m, f"{quantity}_bar") / LN10 for _, _, m in measured]
            axis.errorbar(
                [i for i, _, _ in measured],
                [v for _, v, _ in measured],
                yerr=errors,
                fmt="o",
                markersize=3,
                color="#00897b",
                ecolor="#00897b",
                elinewidth=0.8,
                label="measured",
                gid=f"measured-{quantity}",
            )
        merges = [(i, v) for i, v in enumerate(predicted) if rows[i].op.split("+")[0] == "add" and math.isfinite(v)]
        if len(merges) >= 2:  # the residual stream, merge by merge: its growth is what a deep stack gets wrong
            axis.plot(
                [i for i, _ in merges],
                [v for _, v in merges],
                color="#ef6c00",
                linewidth=1.2,
                marker="s",
                markersize=2.5,
                label="residual stream (predicted)",
                gid=f"stream-{quantity}",
            )
        axis.set_ylabel(label)
        axis.grid(True, axis="y", color="#eceff1")
        _mark_structure(axis, rows)
    _annotate_findings(top, report)
    if maps:
        _phase_maps(fig, grid[2], maps)
    top.legend(loc="best", fontsize=8)
    bottom.set_xlabel("layer (table order)")
    step = max(1, len(rows) // 24)
    bottom.set_xticks(x[::step])
    bottom.set_xticklabels([r.label[-28:] for r in rows[::step]], rotation=60, ha="right", fontsize=7)
    counts = ", ".join(
        f"{report.count(s)} {s}{'s' if report.count(s) > 1 else ''}" for s in ("error", "warning") if report.count(s)
    )
    top.tick_params(labelbottom=False)
    top.set_title(f"{Path(report.model).name or 'model'}: {counts or 'no warnings'}", fontsize=11)
    return fig


def _phase_maps(fig, cell, maps) -> None:
    """Up-sampling layers: K per output phase relative to its mean, as a small heat map each (the checkerboard made
    visible; an even layer is one flat colour)."""
    axes = cell.subgridspec(1, len(maps)).subplots(squeeze=False)[0]
    for axis, row in zip(axes, maps):
        grid = row.phases or []
        mean = sum(sum(line) for line in grid) / max(sum(len(line) for line in grid), 1)
        image = axis.imshow([[v / mean if mean else 0.0 for v in line] for line in grid], cmap="magma", vmin=0)
        image.set_gid(f"phases-{row.label}")
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_title(f"K per phase / mean: {row.label[-24:]}", fontsize=8)
        fig.colorbar(image, ax=axis, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)


def _mark_structure(axis, rows) -> None:
    """Normalisations (dotted) and residual merges (dashed), where the stream is reset or summed."""
    for i, row in enumerate(rows):
        op = row.op.split("+")[0]  # a row's op is its layer's first op, activations folded in after a '+'
        if op in NORMALIZATIONS:
            axis.axvline(i, color="#7e57c2", linestyle=":", linewidth=0.7, gid="normalisation")
        elif op == "add":
            axis.axvline(i, color="#b0bec5", linestyle="--", linewidth=0.7, gid="residual-merge")


def _annotate_findings(axis, report: Report) -> None:
    """Each warning or error at its row: the code, in its severity's colour."""
    where: dict[str, int] = {}
    for i, row in enumerate(report.layers):
        where.setdefault(row.node, i)
        where.setdefault(row.scope, i)
    placed = 0
    for finding in report.findings:
        if severity_rank(finding.severity) < severity_rank("warning"):
            continue
        at = where.get(finding.node, where.get(finding.scope))
        if at is None:
            continue
        y = _log10(report.layers[at].symbolic.K)
        if not math.isfinite(y):
            continue
        axis.annotate(
            finding.code,
            (at, y),
            xytext=(0, 14 + 10 * (placed % 3)),
            textcoords="offset points",
            ha="center",
            fontsize=8,
            color=COLORS[finding.severity],
            arrowprops={"arrowstyle": "-", "color": COLORS[finding.severity], "linewidth": 0.6},
            gid=f"finding-{finding.code}",
        )
        placed += 1


def check_plot(path: str | Path) -> None:
    """Before any analysis: a .png/.svg path, and matplotlib there to draw it."""
    if Path(path).suffix.lower() not in (".png", ".svg"):
        raise UsageError(f"--plot {path}: use a .png or .svg file")
    _pyplot()


def save(report: Report, path: str | Path) -> None:
    """PNG or SVG by the file's suffix."""
    path = Path(path)
    check_plot(path)
    suffix = path.suffix.lower()
    fig = figure(report)
    try:
        fig.savefig(str(path), metadata={"Date": None} if suffix == ".svg" else {"Software": None}, dpi=110)
    finally:
        _pyplot().close(fig)


def svg_text(report: Report) -> str:
    """The plot as SVG markup, for embedding in a page."""
    fig = figure(report)
    buffer = io.StringIO()
    try:
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    finally:
        _pyplot().close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # without the XML prolog and doctype
