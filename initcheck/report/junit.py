"""JUnit XML for CI test reports: a test suite per model, a test case per finding code (stable counts); a
case fails when a finding of that code fails the gate; a model that cannot be loaded is an error."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from initcheck.report.model import ModelResult


def render_junit(results: list[ModelResult], version: str = "") -> str:
    from initcheck.codes import CODES

    root = ET.Element("testsuites", name="initcheck")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for result in results:
        suite = ET.SubElement(root, "testsuite", name=result.model)
        counts = {"tests": 0, "failures": 0, "errors": 0}
        if result.report is None:
            case = ET.SubElement(suite, "testcase", classname=result.model, name="load")
            ET.SubElement(case, "error", message=result.error or "").text = result.error
            counts.update(tests=1, errors=1)
        else:
            failing = result.report.failing(result.fail_on)
            for code in CODES.values():
                case = ET.SubElement(suite, "testcase", classname=result.model, name=f"{code.code} {code.name}")
                counts["tests"] += 1
                mine = [f for f in failing if f.code == code.code]
                if mine:
                    counts["failures"] += 1
                    text = "\n".join(f"[{f.severity}] {f.scope or f.node}: {f.message} Fix: {f.fix}" for f in mine)
                    ET.SubElement(case, "failure", message=mine[0].message[:200], type=mine[0].severity).text = text
                others = [f for f in result.report.findings if f.code == code.code and f not in mine]
                if others:
                    ET.SubElement(case, "system-out").text = "\n".join(
                        f"[{f.severity}] {f.scope or f.node}: {f.message}" for f in others
                    )
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
