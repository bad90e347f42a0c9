"""What a project's config says about findings: severity overrides, ignores, declared deviations (issue 6 §1,
issue 5 §13). Applied after the checks; ignored findings are counted, never silently lost."""

from __future__ import annotations

from dataclasses import replace

from initcheck.config import Config
from initcheck.report.model import Finding, severity_rank


def apply_policy(findings: list[Finding], config: Config) -> tuple[list[Finding], int]:
    """(new findings: those that remain, with the config's severities and reasons; how many it suppressed)."""
    kept, suppressed = [], 0
    for finding in findings:
        level = config.severity.get(finding.code)
        if level == "off" or any(rule.matches(finding) for rule in config.ignore):
            suppressed += 1
            continue
        if level:
            finding = replace(finding, severity=level)
        deviation = next((rule for rule in config.deviations if rule.matches(finding)), None)
        if deviation is not None:
            finding = replace(finding, severity="info", declared=deviation.reason)
        kept.append(finding)
    kept.sort(key=lambda f: (-severity_rank(f.severity), f.code, f.node, f.message))
    return kept, suppressed
