"""JSON report: versioned, documented in docs/json-schema.md, stable key order."""

from __future__ import annotations

import json
import math

from initcheck.report.model import Report


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
