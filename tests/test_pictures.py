"""Signal-propagation plots and the self-contained HTML report: structure, determinism, and the page as a browser
shows it (headless chromium, where installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from conftest import SAMPLES

import initcheck
from initcheck.cli import main

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def report():
    return initcheck.analyze(SAMPLES / "relu_mlp_glorot.onnx", probe=initcheck.ProbeOptions(seeds=2, batch=4))


def test_the_plot_has_its_axes_series_and_findings(report):
    fig = report.plot()
    top, bottom = fig.axes
    assert "log10 K" in top.get_ylabel() and "log10 G" in bottom.get_ylabel() and "layer" in bottom.get_xlabel()
    lines = {line.get_gid(): line for line in top.get_lines() + bottom.get_lines() if line.get_gid()}
    assert set(lines) >= {"predicted-K", "predicted-G"}
    predicted = lines["predicted-K"].get_ydata()
    assert len(predicted) == len(report.layers)
    assert predicted[-1] == pytest.approx(__import__("math").log10(report.layers[-1].symbolic.K))
    measured = [c for c in top.containers if c.lines[0].get_gid() == "measured-K"]
    assert measured and len(measured[0].lines[0].get_xdata()) == sum(r.measured is not None for r in report.layers)
    codes = [t.get_text() for t in top.texts]
    assert {"IC102", "IC112"} <= set(codes)  # the errors, at their layers
    assert len(codes) == sum(f.severity != "info" for f in report.findings)  # information is not annotated


def test_upsampling_phases_are_heat_maps():
    report = initcheck.analyze(SAMPLES / "dcgan_generator.onnx")
    fig = report.plot()
    images = [image for axis in fig.axes for image in axis.get_images()]
    with_phases = [r for r in report.layers if r.phases]
    assert len(with_phases) == 3 and [i.get_gid() for i in images] == [f"phases-{r.label}" for r in with_phases]
    for image, row in zip(images, with_phases):
        data = image.get_array()
        assert data.shape == (2, 2) and data.max() / data.min() == pytest.approx(row.phase_ratio, rel=1e-6)
    assert report.to_dict()["layers"][with_phases[0].index]["phases"] == with_phases[0].phases


def test_svg_is_deterministic_and_keeps_its_text(report, tmp_path):
    first, second = tmp_path / "a.svg", tmp_path / "b.svg"
    report.plot(first)
    report.plot(second)
    assert first.read_bytes() == second.read_bytes()
    text = first.read_text()
    assert 'id="predicted-K"' in text and 'id="finding-IC102"' in text and "log10 K" in text


def test_cli_plot_and_html_for_two_models(tmp_path, capsys):
    page, plot = tmp_path / "report.html", tmp_path / "plot.png"
    models = [str(SAMPLES / "relu_mlp_glorot.onnx"), str(SAMPLES / "attention_unscaled.onnx")]
    code = main(["analyze", *models, "--no-probe", "--output", str(page), "--plot", str(plot)])
    assert code == 1
    assert (tmp_path / "plot-relu_mlp_glorot.png").stat().st_size > 10_000
    assert (tmp_path / "plot-attention_unscaled.png").stat().st_size > 10_000
    html = page.read_text()
    assert html.count('<section id="model-') == 2 and html.count("<svg") == 2
    for code_ in ("IC102", "IC112", "IC504"):
        assert f'<span class="code">{code_}</span>' in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//|url\((?!#)|@import""", html)  # nothing fetched on open
    again = tmp_path / "again.html"
    main(["analyze", *models, "--no-probe", "--output", str(again)])
    assert again.read_bytes() == page.read_bytes()


def test_plot_flags_that_cannot_act_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["analyze", str(SAMPLES / "relu_mlp_he.onnx"), "--no-probe", "--plot", str(tmp_path / "p.pdf")]) == 2
    err = capsys.readouterr().err.strip()
    assert "use a .png or .svg file" in err and len(err.splitlines()) == 1
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["analyze", str(SAMPLES / "relu_mlp_he.onnx"), "--no-probe", "--plot", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'initcheck[plot]'" in err and len(err.splitlines()) == 1


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (Debian: apt install chromium)")
def test_the_page_in_a_browser(report, tmp_path):
    """What a user sees: chromium renders the page, its script runs without an error (it marks the body ready
    last), the findings and the plot are on it, and a screenshot is taken."""
    from initcheck.report.html import render_html
    from initcheck.report.model import ModelResult

    page = tmp_path / "report.html"
    page.write_text(render_html([ModelResult("relu_mlp_glorot.onnx", report)], "test"))
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1300,2400"]
    dom = subprocess.run(
        [*flags, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert 'data-ready="1"' in dom.stdout, dom.stderr[-2000:]
    assert "Uncaught" not in dom.stderr and "CONSOLE" not in dom.stderr.replace("CONSOLE(0)", "")
    assert "IC102" in dom.stdout and "<svg" in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    assert shot.stat().st_size > 50_000
