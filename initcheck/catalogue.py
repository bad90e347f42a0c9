"""The check catalogue as Markdown (docs/checks.md): every code, the check that emits it, its thresholds and
their defaults, what it means, its formula and its fix. Generated from the catalogue itself, so the document
cannot drift from the code (a test compares them): `python -m initcheck.catalogue > docs/checks.md`."""

from __future__ import annotations

from initcheck.checks import CHECKS
from initcheck.checks.registry import emitters
from initcheck.codes import CODES, DEFAULTS

_INTRO = """# Check catalogue

Every finding initcheck reports has one of these codes. Each code is emitted by exactly one registered check
(`initcheck/checks/`); checks of the *symbolic* stage read the symbolic pass, checks of the *probe* stage read
the empirical probe's measurements. Thresholds can be changed per project in the config
(`[tool.initcheck.thresholds] CODE = {name = value}`), severities with `[tool.initcheck.severity]`.
The theory behind each rule, with its Monte Carlo evidence, is in [theory.md](theory.md).
`initcheck explain CODE` prints the same entry; `initcheck rules` lists them all.

This file is generated: `python -m initcheck.catalogue > docs/checks.md`.
"""


def render_catalogue() -> str:
    checks = emitters()
    parts = [_INTRO, "| code | name | default severity | check (stage) |", "|---|---|---|---|"]
    for code in CODES.values():
        check = CHECKS[checks[code.code][0]]
        parts.append(
            f"| [{code.code}](#{code.code.lower()}) | {code.name} | {code.severity} | {check.name} ({check.stage}) |"
        )
    for code in CODES.values():
        check = CHECKS[checks[code.code][0]]
        limits = ", ".join(f"`{name}` = {value:g}" for name, value in DEFAULTS.get(code.code, {}).items())
        parts += [
            f"\n## {code.code}\n",
            f"**{code.name}**, default severity {code.severity}; emitted by the `{check.name}` check ({check.stage} stage).\n",
            f"- **What:** {code.summary}",
            f"- **Formula:** {code.formula}",
            f"- **Fix:** {code.fix}",
            f"- **Thresholds:** {code.thresholds}" + (f" Defaults: {limits}." if limits else ""),
        ]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(render_catalogue(), end="")
