"""Baselines: binary models cannot carry inline suppressions, so a file records the findings a project
accepts today; later runs fail only on findings that are new or worse, and say what changed.

Format (JSON, stable): {"initcheck_baseline": 1, "models": {MODEL: [{"code", "layer", "severity", "value"}]}}
with MODEL the model path relative to the baseline file's folder, and layer the finding's scope or node.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from initcheck.errors import UsageError
from initcheck.report.model import Finding, Report, severity_rank

FORMAT = 1
WORSE = 0.05  # a finding is worse when its distance past the threshold grew by more than 5%


def model_key(model: str, baseline_path: Path) -> str:
    path = Path(model).resolve()
    try:
        return path.relative_to(baseline_path.resolve().parent).as_posix()
    except ValueError:
        return path.as_posix()


def _entry(f: Finding) -> dict:
    # 4 significant digits: a baseline must not churn on the last bits of a float between machines
    value = float(f"{f.value:.4g}") if f.value is not None and math.isfinite(f.value) else None
    return {"code": f.code, "layer": f.scope or f.node, "severity": f.severity, "value": value}


def render(reports: list[Report], path: Path) -> str:
    models = {
        model_key(r.model, path): sorted((_entry(f) for f in r.findings), key=lambda e: (e["code"], e["layer"]))
        for r in reports
    }
    return json.dumps({"initcheck_baseline": FORMAT, "models": dict(sorted(models.items()))}, indent=2) + "\n"


def load(path: Path) -> dict[str, list[dict]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"--baseline {path}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise UsageError(f"--baseline {path}: not a JSON baseline (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"--baseline {path}: not a JSON baseline ({e.msg} at line {e.lineno})") from None
    models = data.get("models") if isinstance(data, dict) else None
    if (
        not isinstance(models, dict)
        or data.get("initcheck_baseline") != FORMAT
        or not all(
            isinstance(entries, list) and all(isinstance(e, dict) for e in entries) for entries in models.values()
        )
    ):
        raise UsageError(f"--baseline {path}: not an initcheck baseline (write one with --write-baseline)")
    return models


def _distance(value, threshold) -> float | None:
    """How far past its threshold a finding is: |ln(value / threshold)| for ratios, |value| for signed decades."""
    if value is None or not math.isfinite(value):
        return None
    if value <= 0 or threshold is None or threshold <= 0:
        return abs(value)
    return abs(math.log(value / threshold))


def compare(report: Report, entries: list[dict]) -> None:
    """Mark each finding new / worsened / unchanged; list the baseline's findings that are gone in report.fixed."""
    remaining = list(entries)
    for f in report.findings:
        layer = f.scope or f.node
        old = next((e for e in remaining if e.get("code") == f.code and e.get("layer") == layer), None)
        if old is None:
            f.baseline = "new"
            continue
        remaining.remove(old)
        worse_severity = severity_rank(f.severity) > severity_rank(old.get("severity", "info"))
        now, before = _distance(f.value, f.threshold), _distance(old.get("value"), f.threshold)
        worse_value = now is not None and before is not None and now > before * (1 + WORSE) + 1e-9
        f.baseline = "worsened" if worse_severity or worse_value else "unchanged"
    report.fixed = remaining
