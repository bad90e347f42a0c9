"""The registries that tie the project together: checks to their codes, ops to their handlers."""

from __future__ import annotations

import pytest

from initcheck.checks import CHECKS, run_checks
from initcheck.checks.registry import Check, CheckContext, check, emitters, verify_catalogue
from initcheck.codes import CODES, DEFAULTS
from initcheck.report.model import Finding


def test_every_code_has_exactly_one_check_and_every_check_a_known_code():
    assert {code: len(names) for code, names in emitters().items()} == {code: 1 for code in CODES}
    assert {c for chk in CHECKS.values() for c in chk.codes} == set(CODES)


def test_a_code_without_an_emitter_or_with_two_is_caught(monkeypatch):
    monkeypatch.delitem(CHECKS, "dropout")
    with pytest.raises(AssertionError, match="IC507: emitted by no check"):
        verify_catalogue()
    monkeypatch.setitem(CHECKS, "dropout", Check("dropout", ("IC507",), "symbolic", lambda ctx: []))
    monkeypatch.setitem(CHECKS, "dropout again", Check("dropout again", ("IC507",), "symbolic", lambda ctx: []))
    with pytest.raises(AssertionError, match=r"IC507: emitted by \['dropout', 'dropout again'\]"):
        verify_catalogue()


def test_registration_rejects_duplicates_and_unknown_codes():
    with pytest.raises(ValueError, match="registered twice"):
        check("signal", "IC101")(lambda ctx: [])
    with pytest.raises(ValueError, match="IC999"):
        check("new", "IC999")(lambda ctx: [])


def test_a_check_emitting_an_undeclared_code_is_skipped_with_a_note(monkeypatch):
    stray = Finding("IC101", "error", "forward", "x")
    monkeypatch.setattr("initcheck.checks.CHECKS", {"odd": Check("odd", ("IC507",), "symbolic", lambda ctx: [stray])})
    with pytest.raises(AssertionError, match="undeclared"):  # the tests run with INITCHECK_DEBUG: a bug raises
        run_checks(CheckContext(graph=None, result=None, rows=[]))
    monkeypatch.delenv("INITCHECK_DEBUG")
    findings, notes = run_checks(CheckContext(graph=None, result=None, rows=[]))
    assert findings == [] and notes == [
        "odd check skipped on this model (AssertionError: emitted undeclared code(s) IC101)"
    ]


def test_a_configured_threshold_reaches_the_rows(tmp_path):
    """Thresholds live with their codes and a config sets them: IC401's approximation bar is every approximate
    row's stated error bar."""
    import math

    from conftest import SAMPLES

    import initcheck

    config = tmp_path / ".initcheck.yaml"
    config.write_text("thresholds:\n  IC401: {approximation_bar: 0.5}\n")
    default, wide = (initcheck.analyze(SAMPLES / "residual_mlp.onnx", config=c) for c in (None, config))
    pairs = [(a, b) for a, b in zip(default.layers, wide.layers) if not a.symbolic.exact]
    assert pairs and DEFAULTS["IC401"]["approximation_bar"] == 0.1
    for a, b in pairs:
        assert a.symbolic.K_bar == pytest.approx(math.hypot(a.spread, 0.1))
        assert b.symbolic.K_bar == pytest.approx(math.hypot(b.spread, 0.5))


def test_every_op_table_refuses_a_second_handler_for_an_op():
    from initcheck.frontends import onnx_ops, torch_ops
    from initcheck.probes import onnx_torch
    from initcheck.registry import Table
    from initcheck.rules import BACKWARD, FORWARD, load_all

    load_all()
    tables = [FORWARD, BACKWARD, onnx_ops.HANDLERS, torch_ops.HANDLERS, onnx_torch.OPS]
    assert all(isinstance(t, Table) and len(t) > 20 for t in tables)
    for table in tables:
        taken = next(iter(table))
        with pytest.raises(ValueError, match=f"duplicate {table.what} for '{taken}'"):
            table.register(taken)(lambda *args: None)


def _package_imports() -> dict[str, set[str]]:
    """initcheck's packages (initcheck.X) and the others each imports anywhere in its files, lazily or not."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "initcheck"
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        source = "initcheck." + path.relative_to(root).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                parts = name.split(".")
                if parts[0] == "initcheck" and len(parts) > 1 and f"initcheck.{parts[1]}" != source:
                    graph.setdefault(source, set()).add(f"initcheck.{parts[1]}")
    return graph


def test_the_layers_import_downward_only():
    graph = _package_imports()

    def reaches(start: str, target: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            here = todo.pop()
            if here == target:
                return True
            if here not in seen:
                seen.add(here)
                todo += graph.get(here, ())
        return False

    cycles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if reaches(b, a))
    assert cycles == []
    # frontends translate; they never run the model or analyse it
    assert not graph["initcheck.frontends"] & {"initcheck.probes", "initcheck.analysis", "initcheck.checks"}
    assert not graph["initcheck.analysis"] & {"initcheck.checks", "initcheck.api", "initcheck.cli"}
