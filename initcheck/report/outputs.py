"""Which renderer writes which output: by --format for stdout, by file suffix for --output."""

from __future__ import annotations

import os

from initcheck.errors import UsageError
from initcheck.report.model import ModelResult

FORMATS = ("table", "json", "markdown", "sarif", "junit")
_SUFFIXES = {
    ".json": "json",
    ".md": "markdown",
    ".markdown": "markdown",
    ".sarif": "sarif",
    ".xml": "junit",
    ".txt": "table",
}


def format_for(path: str) -> str:
    name = os.path.basename(path).lower()
    if name.endswith(".sarif.json"):
        return "sarif"
    fmt = _SUFFIXES.get(os.path.splitext(name)[1])
    if fmt is None:
        raise UsageError(f"--output {path}: unknown suffix; use .json, .md, .sarif, .xml (JUnit) or .txt")
    return fmt


def render(fmt: str, results: list[ModelResult], version: str, width: int = 200) -> str:
    if fmt == "json":
        from initcheck.report.json_out import render_results

        return render_results(results)
    if fmt == "markdown":
        from initcheck.report.markdown import render_markdown

        return render_markdown(results)
    if fmt == "sarif":
        from initcheck.report.sarif import render_sarif

        return render_sarif(results, version)
    if fmt == "junit":
        from initcheck.report.junit import render_junit

        return render_junit(results)
    from initcheck.report.table import render_text

    return render_text(results, width)
