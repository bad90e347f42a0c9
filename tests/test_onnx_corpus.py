"""Every real ONNX graph shipped inside the onnx package analyses with exit 0 or 1, never a traceback."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import onnx
import pytest

from initcheck.cli import main

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
MODELS = sorted(
    p for group in ("light", "pytorch-converted", "pytorch-operator", "simple") for p in (DATA / group).rglob("*.onnx")
)


def test_corpus_is_present():
    assert len(MODELS) > 100


@pytest.mark.parametrize("path", MODELS, ids=lambda p: str(p.relative_to(DATA)))
def test_analyses_cleanly(path, monkeypatch):
    monkeypatch.delenv("INITCHECK_DEBUG", raising=False)  # the shipped behaviour, not the test switch
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["analyze", str(path), "--format", "json", "--seeds", "1", "--batch", "2"])
    assert code in (0, 1), err.getvalue()
    report = json.loads(out.getvalue())
    assert report["schema_version"] and isinstance(report["layers"], list)
    assert "Traceback" not in err.getvalue()
    # the probe runs or says why not (IC403); where it runs, the torch form must agree with onnxruntime
    assert not any(f["code"] == "IC402" for f in report["findings"])
