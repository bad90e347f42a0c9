"""Issue 6: config discovery and errors, baselines, machine outputs validated against their schemas, many
models per call, exit codes for every combination of findings and --fail-on, determinism."""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path
from xml.etree import ElementTree as ET

import jsonschema
import numpy as np
import onnx
import pytest
from conftest import SAMPLES
from onnx import TensorProto, helper, numpy_helper

from initcheck.cli import main
from initcheck.codes import CODES

CLEAN, INFO, WARNING, ERROR = (
    SAMPLES / f"{n}.onnx" for n in ("inception_scaled", "prenorm_transformer", "relu_mlp_he", "relu_mlp_glorot")
)


def run(args, capsys, monkeypatch, cwd=None):
    monkeypatch.delenv("INITCHECK_DEBUG", raising=False)
    if cwd is not None:
        monkeypatch.chdir(cwd)
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def linear_chain(path: Path, scale: float, depth: int = 8, width: int = 64, dynamic: bool = False) -> Path:
    """x -> depth x (MatMul, Relu): weights N(0, scale^2 * 2 / width); scale < 1 makes K vanish (IC102)."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(depth):
        w = (rng.standard_normal((width, width)) * scale * np.sqrt(2 / width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"]), helper.make_node("Relu", [f"h{i}"], [f"a{i}"])]
        x = f"a{i}"
    dims = ["batch", "features"] if dynamic else [1, width]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def report_schema():
    return json.loads(resources.files("initcheck.report").joinpath("schema.json").read_text())


# -- exit codes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model,worst", [(CLEAN, None), (INFO, "info"), (WARNING, "warning"), (ERROR, "error")])
@pytest.mark.parametrize("fail_on", ["info", "warning", "error", "never"])
def test_exit_code_for_every_severity_and_fail_on(model, worst, fail_on, capsys, monkeypatch):
    code, out, _ = run(["analyze", model, "--no-probe", "--format", "json", "--fail-on", fail_on], capsys, monkeypatch)
    summary = json.loads(out)["summary"]
    assert (
        max(
            (s for s in ("info", "warning", "error") if summary[s]),
            key=["info", "warning", "error"].index,
            default=None,
        )
    ) == worst
    order = ["info", "warning", "error"]
    expected = 1 if fail_on != "never" and worst is not None and order.index(worst) >= order.index(fail_on) else 0
    assert code == expected


# -- outputs ----------------------------------------------------------------------------------------------------


def test_every_output_at_once_and_each_validates(tmp_path, capsys, monkeypatch):
    outs = [tmp_path / n for n in ("r.json", "r.md", "r.sarif", "r.xml", "r.txt")]
    code, out, _ = run(
        ["analyze", ERROR, WARNING, "--no-probe", *sum((["--output", o] for o in outs), [])], capsys, monkeypatch
    )
    assert code == 1
    assert out.count("->") == 2 and "FAIL" in out and "pass" in out  # one summary line per model on stdout
    data = json.loads(outs[0].read_text())
    jsonschema.validate(data, report_schema())
    assert [Path(m["model"]).name for m in data["models"]] == [ERROR.name, WARNING.name]
    markdown = outs[1].read_text()
    assert (
        "## initcheck: 1 of 2 model(s) pass" in markdown
        and "❌ fails" in markdown
        and "| 🔴 error | `IC102`" in markdown
    )
    validate_sarif(json.loads(outs[2].read_text()))
    suites = ET.parse(outs[3]).getroot()
    assert suites.tag == "testsuites" and int(suites.get("tests")) == 2 * len(CODES)
    failed = {case.get("name").split()[0] for case in suites.iter("testcase") if case.find("failure") is not None}
    assert failed == {"IC102", "IC112"}  # the error-level findings of relu_mlp_glorot; warnings pass --fail-on error
    assert "initcheck:" in outs[4].read_text() and "\x1b[" not in outs[4].read_text()


def validate_sarif(log: dict) -> None:
    path = os.environ.get("INITCHECK_SARIF_SCHEMA")
    if not path or not Path(path).is_file():
        pytest.fail("INITCHECK_SARIF_SCHEMA must name the SARIF 2.1.0 schema (`make test` fetches it)")
    schema = json.loads(Path(path).read_text())
    jsonschema.Draft4Validator(schema).validate(log)
    run_ = log["runs"][0]
    rules = [r["id"] for r in run_["tool"]["driver"]["rules"]]
    assert rules == list(CODES)
    assert all(rules[r["ruleIndex"]] == r["ruleId"] for r in run_["results"])


def test_single_model_json_validates_and_stdout_formats(capsys, monkeypatch):
    code, out, _ = run(["analyze", INFO, "--no-probe", "--format", "json"], capsys, monkeypatch)
    jsonschema.validate(json.loads(out), report_schema())
    code, out, _ = run(["analyze", INFO, "--no-probe", "--format", "sarif"], capsys, monkeypatch)
    validate_sarif(json.loads(out))
    code, out, _ = run(["analyze", INFO, "--no-probe", "--format", "markdown"], capsys, monkeypatch)
    assert out.startswith("## initcheck: 1 of 1 model(s) pass")


def test_unknown_output_suffix_is_a_usage_error(tmp_path, capsys, monkeypatch):
    code, _, err = run(["analyze", INFO, "--output", tmp_path / "r.pdf"], capsys, monkeypatch)
    assert code == 2 and "unknown suffix" in err and len(err.strip().splitlines()) == 1


def test_same_model_same_options_byte_identical_json_with_probe(tmp_path, capsys, monkeypatch):
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in paths:
        run(
            ["analyze", SAMPLES / "unet_block.onnx", "--device", "cpu", "--seeds", "2", "--output", path],
            capsys,
            monkeypatch,
        )
    first, second = (p.read_bytes() for p in paths)
    assert first == second and b'"probe": {' in first


# -- many models ------------------------------------------------------------------------------------------------


def test_one_broken_file_does_not_stop_the_others(tmp_path, capsys, monkeypatch):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    target = tmp_path / "r.json"
    code, out, err = run(["analyze", WARNING, broken, CLEAN, "--no-probe", "--output", target], capsys, monkeypatch)
    assert code == 2
    assert err.count("initcheck: error:") == 1 and "broken.onnx" in err
    data = json.loads(target.read_text())
    assert len(data["models"]) == 2 and data["errors"][0]["model"].endswith("broken.onnx")
    assert "ERROR" in out and out.count("pass") == 2


def test_aggregate_exit_code_is_the_worst_model(capsys, monkeypatch):
    assert run(["analyze", CLEAN, WARNING, "--no-probe"], capsys, monkeypatch)[0] == 0
    assert run(["analyze", CLEAN, ERROR, "--no-probe"], capsys, monkeypatch)[0] == 1


# -- baselines --------------------------------------------------------------------------------------------------


def test_baseline_round_trip_new_worsened_fixed(tmp_path, capsys, monkeypatch):
    model, base = tmp_path / "model.onnx", tmp_path / "baseline.json"
    linear_chain(model, 0.6)  # IC102 / IC112 errors
    code, _, _ = run(["analyze", model, "--no-probe", "--write-baseline", base], capsys, monkeypatch)
    assert code == 0 and json.loads(base.read_text())["models"]["model.onnx"]
    assert run(["analyze", model, "--no-probe", "--baseline", base], capsys, monkeypatch)[0] == 0  # nothing new

    linear_chain(model, 0.4)  # same findings, further past the threshold
    code, out, err = run(["analyze", model, "--no-probe", "--baseline", base, "--format", "json"], capsys, monkeypatch)
    assert code == 1 and "worsened: IC102" in err
    assert {f["baseline"] for f in json.loads(out)["findings"]} >= {"worsened"}

    linear_chain(model, 1.0)  # healthy now
    code, out, err = run(["analyze", model, "--no-probe", "--baseline", base, "--format", "json"], capsys, monkeypatch)
    assert code == 0 and "fixed: IC102" in err
    assert {f["code"] for f in json.loads(out)["fixed"]} >= {"IC102", "IC112"}


def test_new_finding_against_a_baseline_fails(tmp_path, capsys, monkeypatch):
    model, base = tmp_path / "model.onnx", tmp_path / "baseline.json"
    linear_chain(model, 1.0)
    run(["analyze", model, "--no-probe", "--write-baseline", base], capsys, monkeypatch)
    linear_chain(model, 0.5)
    code, _, err = run(["analyze", model, "--no-probe", "--baseline", base], capsys, monkeypatch)
    assert code == 1 and "new: IC102" in err


def test_bad_baseline_file_is_one_line(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "b.json"
    bad.write_text("{}")
    code, _, err = run(["analyze", CLEAN, "--no-probe", "--baseline", bad], capsys, monkeypatch)
    assert code == 2 and "not an initcheck baseline" in err and len(err.strip().splitlines()) == 1


# -- config -----------------------------------------------------------------------------------------------------


def project(tmp_path: Path, config_name: str | None, text: str, model_src: Path = WARNING) -> Path:
    """tmp/project/<config>, tmp/project/models/<model>: discovery walks up from the model's folder."""
    root = tmp_path / "project"
    (root / "models").mkdir(parents=True)
    if config_name:
        (root / config_name).write_text(text)
    return Path(shutil.copy(model_src, root / "models" / model_src.name))


def test_pyproject_config_is_discovered_upward(tmp_path, capsys, monkeypatch):
    model = project(tmp_path, "pyproject.toml", '[project]\nname = "x"\n\n[tool.initcheck]\nfail_on = "warning"\n')
    assert run(["analyze", model, "--no-probe"], capsys, monkeypatch)[0] == 1  # the config's fail_on
    assert run(["analyze", model, "--no-probe", "--fail-on", "error"], capsys, monkeypatch)[0] == 0  # the flag wins
    assert run(["analyze", model, "--no-probe", "--no-config"], capsys, monkeypatch)[0] == 0


def test_yaml_config_and_pyproject_without_section(tmp_path, capsys, monkeypatch):
    model = project(tmp_path, ".initcheck.yaml", "fail_on: warning\nseverity:\n  IC505: error\n")
    (model.parent / "pyproject.toml").write_text('[project]\nname = "no initcheck section here"\n')
    code, out, _ = run(["analyze", model, "--no-probe", "--format", "json"], capsys, monkeypatch)
    report = json.loads(out)
    assert code == 1 and report["config"].endswith(".initcheck.yaml")
    assert [f["severity"] for f in report["findings"] if f["code"] == "IC505"] == ["error"]


def test_thresholds_ignore_severity_and_deviations(tmp_path, capsys, monkeypatch):
    model = project(
        tmp_path,
        "pyproject.toml",
        """
[tool.initcheck]
ignore = ["IC505", { code = "IC112", layer = "*" }]
deviations = [{ code = "IC102", reason = "meta-learned init, small on purpose" }]
[tool.initcheck.thresholds]
IC101 = { warning = 0.5 }
[tool.initcheck.severity]
IC512 = "off"
""",
        ERROR,
    )
    code, out, _ = run(["analyze", model, "--no-probe", "--format", "json"], capsys, monkeypatch)
    report = json.loads(out)
    codes = {f["code"]: f for f in report["findings"]}
    assert "IC505" not in codes and "IC112" not in codes and "IC512" not in codes and report["suppressed"] == 3
    assert codes["IC102"]["severity"] == "info" and codes["IC102"]["declared"].startswith("meta-learned")
    assert code == 0  # the remaining error was declared intentional


def test_threshold_override_changes_what_is_found(tmp_path, capsys, monkeypatch):
    model = project(tmp_path, ".initcheck.yaml", "thresholds:\n  IC102: {warning: 10, error: 20}\n", ERROR)
    code, out, _ = run(["analyze", model, "--no-probe", "--format", "json"], capsys, monkeypatch)
    assert "IC102" not in {f["code"] for f in json.loads(out)["findings"]}


def test_per_model_inputs_and_probe_settings(tmp_path, capsys, monkeypatch):
    root = tmp_path / "p"
    root.mkdir()
    linear_chain(root / "dyn.onnx", 1.0, dynamic=True)
    code, _, err = run(["analyze", root / "dyn.onnx", "--no-probe"], capsys, monkeypatch)
    assert code == 2 and "features" in err  # a dynamic dimension needs a shape
    (root / ".initcheck.yaml").write_text('models:\n  "dyn*.onnx":\n    inputs: {x: "2x64"}\nprobe: {enabled: false}\n')
    code, out, _ = run(["analyze", root / "dyn.onnx", "--format", "json"], capsys, monkeypatch)
    report = json.loads(out)
    assert code == 0 and report["inputs"]["x"] == [2, 64] and report["probe"] is None


@pytest.mark.parametrize(
    "text,expected",
    [
        ("[tool.initcheck]\nfail_on = 'loud'\n", "fail_on: expected one of"),
        ("[tool.initcheck]\ncolour = true\n", "colour: unknown key"),
        ("[tool.initcheck.thresholds]\nIC999 = { warning = 1 }\n", "thresholds.IC999: unknown finding code"),
        ("[tool.initcheck.thresholds]\nIC101 = { loud = 1 }\n", "thresholds.IC101.loud: unknown threshold"),
        (
            "[tool.initcheck.thresholds]\nIC101 = { warning = 'x' }\n",
            "thresholds.IC101.warning: expected a non-negative",
        ),
        ("[tool.initcheck]\ndeviations = [{ code = 'IC101' }]\n", "deviations[0]: a deviation needs a reason"),
        ("[tool.initcheck.probe]\nbatch = 0\n", "probe.batch: must be positive"),
        ("[tool.initcheck.models.'a.onnx']\ninputs = { x = '1xfoo' }\n", "models.a.onnx.inputs.x"),
        ("[tool.initcheck\n", "not valid TOML"),
    ],
)
def test_config_errors_name_the_key_and_the_file(tmp_path, capsys, monkeypatch, text, expected):
    model = project(tmp_path, "pyproject.toml", text)
    code, out, err = run(["analyze", model, "--no-probe"], capsys, monkeypatch)
    assert code == 2 and expected in err and "pyproject.toml" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_yaml_config_errors(tmp_path, capsys, monkeypatch):
    model = project(tmp_path, ".initcheck.yaml", "ignore: IC101\n")
    code, _, err = run(["analyze", model, "--no-probe"], capsys, monkeypatch)
    assert code == 2 and ".initcheck.yaml: ignore: expected a list" in err
    (model.parent.parent / ".initcheck.yaml").write_text("fail_on: [\n")
    code, _, err = run(["analyze", model, "--no-probe"], capsys, monkeypatch)
    assert code == 2 and "not valid YAML" in err


def test_explicit_config_file_and_api(tmp_path, capsys, monkeypatch):
    import initcheck

    config = tmp_path / "ci.yaml"
    config.write_text("severity: {IC505: 'off'}\n")
    code, out, _ = run(["analyze", WARNING, "--no-probe", "--config", config, "--format", "json"], capsys, monkeypatch)
    assert json.loads(out)["suppressed"] == 1 and code == 0
    report = initcheck.analyze(WARNING, config=config)
    assert "IC505" not in {f.code for f in report.findings} and report.config == str(config)


# -- rules ------------------------------------------------------------------------------------------------------


def test_rules_lists_codes_thresholds_and_coverage(capsys, monkeypatch):
    code, out, _ = run(["rules"], capsys, monkeypatch)
    assert code == 0 and all(c in out for c in CODES)
    assert "IC501  checkerboard-upsampling    error    warning=1.5, error=2" in out
    assert "ONNX ops translated" in out and "ConvTranspose" in out and "ATen ops translated" in out
