"""Which renderer writes which output: by --format for stdout, by file suffix for --output."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from initcheck.errors import UsageError
from initcheck.report.model import ModelResult

# One entry per output format: its --output suffixes and its renderer, `module:function(results, version)`.
# Renderers are imported only when used (the table needs rich, JSON nothing). A new format is a module in
# initcheck/report/ and one line here; `--format` offers exactly these.
RENDERERS: dict[str, tuple[tuple[str, ...], str]] = {
    "table": ((".txt",), "initcheck.report.table:render_text"),
    "json": ((".json",), "initcheck.report.json_out:render_results"),
    "markdown": ((".md", ".markdown"), "initcheck.report.markdown:render_markdown"),
    "sarif": ((".sarif", ".sarif.json"), "initcheck.report.sarif:render_sarif"),
    "junit": ((".xml",), "initcheck.report.junit:render_junit"),
    "html": ((".html", ".htm"), "initcheck.report.html:render_html"),
}
FORMATS = tuple(RENDERERS)
_SUFFIXES = {suffix: fmt for fmt, (suffixes, _) in RENDERERS.items() for suffix in suffixes}


def format_for(path: str) -> str:
    name = os.path.basename(path).lower()
    # the longest matching suffix decides: report.sarif.json is SARIF, not plain JSON
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return _SUFFIXES[suffix]
    raise UsageError(f"--output {path}: unknown suffix; use .json, .md, .sarif, .xml (JUnit), .html or .txt")


def render(fmt: str, results: list[ModelResult], version: str) -> str:
    module, _, function = RENDERERS[fmt][1].partition(":")
    return getattr(importlib.import_module(module), function)(results, version)


def check_writable(path: str, flag: str) -> None:
    """Before any analysis: a report must be writable where asked, or the run would be wasted."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise UsageError(f"{flag} {path}: is a folder")
    if not folder.exists():
        raise UsageError(f"{flag} {path}: folder '{folder}' does not exist")
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: '{folder}' is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"{flag} {path}: not writable")
