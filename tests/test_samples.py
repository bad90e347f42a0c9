"""The bundled samples: expected findings, agreement with onnxruntime, deterministic regeneration."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import SAMPLES
from measure import compare_with_onnxruntime

import initcheck

spec = importlib.util.spec_from_file_location("make_samples", SAMPLES / "make_samples.py")
make_samples = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_samples)
NAMES = sorted(make_samples.EXPECTED)


@pytest.mark.parametrize("name", NAMES)
def test_expected_findings(name):
    report = initcheck.analyze(SAMPLES / f"{name}.onnx")
    raised = {f.code for f in report.findings if f.severity in ("warning", "error")}
    assert raised == make_samples.EXPECTED[name], [f.message for f in report.findings]
    info = {f.code for f in report.findings if f.severity == "info"}
    assert make_samples.INFO.get(name, set()) <= info, [f.message for f in report.findings]
    assert not report.coverage.unsupported


@pytest.mark.parametrize("name", NAMES)
def test_agrees_with_onnxruntime(name):
    """Done-when of issue 2: every exactly-modeled value within 15% (where the predicted instance spread is
    <= 5%) and within ln 1.15 + 3 SE everywhere."""
    checked, tight, failures = compare_with_onnxruntime(SAMPLES / f"{name}.onnx", runs=256)
    assert not failures, "\n".join(failures)
    if name != "lstm":  # recurrent rules are approximations: nothing of the LSTM is exactly modeled
        assert tight > 0


def test_regenerating_samples_gives_the_same_models(tmp_path):
    make_samples.main(tmp_path)
    for name in NAMES:
        fresh = initcheck.analyze(tmp_path / f"{name}.onnx")
        committed = initcheck.analyze(SAMPLES / f"{name}.onnx")
        assert [r.symbolic.K for r in fresh.layers] == pytest.approx([r.symbolic.K for r in committed.layers], rel=1e-9)


def test_sample_files_are_small():
    for path in SAMPLES.glob("*.onnx"):
        assert path.stat().st_size < 1_100_000, path
