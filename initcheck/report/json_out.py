"""JSON report: versioned, described by initcheck/report/schema.json, stable order: one report object for one
model; {"schema_version", "models": [...], "errors": [...]} for several."""

from __future__ import annotations

import json
import math

from initcheck.report.model import SCHEMA_VERSION, ModelResult, Report


def _finite(obj):
    """JSON has no Inf/NaN: write them as strings so every parser reads the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "inf" if obj > 0 else "-inf" if obj < 0 else "nan"
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def render_json(report: Report) -> str:
    return json.dumps(_finite(report.to_dict()), indent=2, sort_keys=False) + "\n"


def render_results(results: list[ModelResult], version: str = "") -> str:
    if len(results) == 1 and results[0].report is not None:
        return render_json(results[0].report)
    data = {
        "schema_version": SCHEMA_VERSION,
        "models": [r.report.to_dict() for r in results if r.report is not None],
        "errors": [{"model": r.model, "error": r.error} for r in results if r.report is None],
    }
    return json.dumps(_finite(data), indent=2) + "\n"
