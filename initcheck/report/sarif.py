"""SARIF 2.1.0 for code scanning: one rule per finding code, one result per finding, located at the model file
(binary: line 1) with the layer as a logical location; baselineState when compared with a baseline."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from initcheck.report.model import ModelResult

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVEL = {"error": "error", "warning": "warning", "info": "note"}
_STATE = {"new": "new", "worsened": "updated", "unchanged": "unchanged"}


def _uri(model: str) -> str:
    path = Path(model)
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.resolve().as_uri()


def _rules(codes) -> list[dict]:
    return [
        {
            "id": c.code,
            "name": c.name.replace("-", " ").title().replace(" ", ""),
            "shortDescription": {"text": c.summary.split(": ")[0].split(". ")[0][:200]},
            "fullDescription": {"text": c.summary},
            "help": {"text": f"{c.summary}\nFormula: {c.formula}\nFix: {c.fix}\nThresholds: {c.thresholds}"},
            "defaultConfiguration": {"level": _LEVEL[c.severity]},
        }
        for c in codes
    ]


def _number(x):
    return x if x is None or math.isfinite(x) else str(x)


def render_sarif(results: list[ModelResult], version: str) -> str:
    from initcheck.codes import CODES

    codes = list(CODES.values())
    index = {c.code: i for i, c in enumerate(codes)}
    out, notifications = [], []
    for result in results:
        uri = _uri(result.model)
        if result.report is None:
            notifications.append({"level": "error", "message": {"text": f"{uri}: {result.error}"}})
            continue
        for f in result.report.findings:
            text = (
                f.message
                + (f" Fix: {f.fix}" if f.fix else "")
                + (f" (intentional: {f.declared})" if f.declared else "")
            )
            entry = {
                "ruleId": f.code,
                "ruleIndex": index[f.code],
                "level": _LEVEL[f.severity],
                "message": {"text": text},
                "locations": [
                    {
                        "physicalLocation": {"artifactLocation": {"uri": uri}, "region": {"startLine": 1}},
                        "logicalLocations": [{"name": f.scope or f.node or uri, "kind": "module"}],
                    }
                ],
                "partialFingerprints": {
                    "initcheck/v1": hashlib.sha256(f"{uri}|{f.code}|{f.scope or f.node}".encode()).hexdigest()[:32]
                },
                "properties": {
                    "value": _number(f.value),
                    "threshold": _number(f.threshold),
                    "fixValue": _number(f.fix_value),
                    "measured": _number(f.measured),
                },
            }
            if f.baseline:
                entry["baselineState"] = _STATE[f.baseline]
            out.append(entry)
    run = {
        "tool": {"driver": {"name": "initcheck", "version": version, "rules": _rules(codes)}},
        "results": out,
        "columnKind": "unicodeCodePoints",
    }
    if notifications:
        run["invocations"] = [{"executionSuccessful": False, "toolExecutionNotifications": notifications}]
    return json.dumps({"$schema": SCHEMA, "version": "2.1.0", "runs": [run]}, indent=2) + "\n"
