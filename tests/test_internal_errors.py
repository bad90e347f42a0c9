"""An exception inside initcheck (a rule, a frontend handler) is a bug: reported as IC302 with the exception,
never passed off as an unsupported op (IC301); under INITCHECK_DEBUG (the tests) it raises."""

from __future__ import annotations

import pytest
import torch
from conftest import SAMPLES
from torch import nn

import initcheck


def _broken(*args, **kwargs):
    raise AttributeError("'NoneType' object has no attribute 'm'")


def test_a_rule_that_raises_is_a_bug_report_not_an_unsupported_op(monkeypatch):
    from initcheck.rules import FORWARD, load_all

    load_all()
    monkeypatch.setitem(FORWARD, "linear", _broken)
    with pytest.raises(AttributeError):  # the tests run with INITCHECK_DEBUG: bugs raise
        initcheck.analyze(SAMPLES / "relu_mlp_he.onnx")
    monkeypatch.delenv("INITCHECK_DEBUG")
    report = initcheck.analyze(SAMPLES / "relu_mlp_he.onnx")
    internal = [f for f in report.findings if f.code == "IC302"]
    assert len(internal) == 1 and internal[0].value == 16  # the 16 linear layers, one finding
    assert "AttributeError: 'NoneType' object has no attribute 'm'" in internal[0].message
    assert "IC301" not in {f.code for f in report.findings}


def test_a_backward_rule_that_raises_is_reported_too(monkeypatch):
    from initcheck.rules import BACKWARD, load_all

    load_all()
    monkeypatch.setitem(BACKWARD, "linear", _broken)
    monkeypatch.delenv("INITCHECK_DEBUG")
    report = initcheck.analyze(SAMPLES / "relu_mlp_he.onnx")
    assert [f.code for f in report.findings if f.code.startswith("IC3")] == ["IC302"]


def test_a_frontend_handler_that_raises_is_reported(monkeypatch):
    from initcheck.frontends import torch_ops

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    monkeypatch.setitem(torch_ops.HANDLERS, "linear", _broken)
    with pytest.raises(AttributeError):
        initcheck.analyze(model, torch.randn(2, 8))
    monkeypatch.delenv("INITCHECK_DEBUG")
    report = initcheck.analyze(model, torch.randn(2, 8))
    coverage = [f for f in report.findings if f.code.startswith("IC3")]
    assert [f.code for f in coverage] == ["IC302"] and coverage[0].value == 2  # both linears
    assert "AttributeError" in coverage[0].message
