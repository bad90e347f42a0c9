"""The command line: exit codes, JSON, explain/rules, and one clear line for every kind of bad input."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import onnx
from conftest import SAMPLES
from onnx import TensorProto, helper, numpy_helper

from initcheck.cli import main

HEALTHY = SAMPLES / "relu_mlp_he.onnx"
BROKEN = SAMPLES / "relu_mlp_glorot.onnx"  # IC102/IC112 errors
WARNING_ONLY = SAMPLES / "tanh_mlp_glorot.onnx"


def run(args, capsys, debug=False, monkeypatch=None):
    if monkeypatch is not None and not debug:
        monkeypatch.delenv("INITCHECK_DEBUG", raising=False)
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def tiny_model(path, weight=None, op="Relu", dims=("N", 4), domain="", opset=17):
    w = weight if weight is not None else np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32) / 2
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node(op, ["h"], ["y"], domain=domain)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def test_exit_codes_follow_fail_on(capsys, monkeypatch):
    assert run(["analyze", HEALTHY], capsys, monkeypatch=monkeypatch)[0] == 0
    assert run(["analyze", BROKEN], capsys, monkeypatch=monkeypatch)[0] == 1
    assert run(["analyze", WARNING_ONLY], capsys, monkeypatch=monkeypatch)[0] == 0
    assert run(["analyze", WARNING_ONLY, "--fail-on", "warning"], capsys, monkeypatch=monkeypatch)[0] == 1
    assert run(["analyze", BROKEN, "--fail-on", "never"], capsys, monkeypatch=monkeypatch)[0] == 0


def test_table_lists_layers_findings_and_coverage(capsys, monkeypatch):
    code, out, _ = run(["analyze", BROKEN], capsys, monkeypatch=monkeypatch)
    assert "IC102" in out and "fix:" in out and "op coverage:" in out and "depth 16" in out
    assert "\x1b[" not in out  # no colour codes when piped


def test_all_nodes_shows_more_rows(capsys, monkeypatch):
    _, layers, _ = run(
        ["analyze", SAMPLES / "prenorm_transformer.onnx", "--format", "json"], capsys, monkeypatch=monkeypatch
    )
    _, nodes, _ = run(
        ["analyze", SAMPLES / "prenorm_transformer.onnx", "--format", "json", "--all-nodes"],
        capsys,
        monkeypatch=monkeypatch,
    )
    assert len(json.loads(nodes)["layers"]) > len(json.loads(layers)["layers"])


def test_json_report_is_complete_and_versioned(capsys, monkeypatch, tmp_path):
    code, out, _ = run(["analyze", BROKEN, "--format", "json"], capsys, monkeypatch=monkeypatch)
    report = json.loads(out)
    assert report["schema_version"] == "1.1" and code == 1
    row = report["layers"][0]
    for key in (
        "node",
        "scope",
        "op",
        "shape",
        "fan_in",
        "mean",
        "second_moment",
        "forward_log10",
        "grad_second_moment",
        "backward_log10",
        "spread",
        "exact",
        "status",
    ):
        assert key in row
    finding = report["findings"][0]
    for key in ("code", "severity", "kind", "node", "scope", "value", "fix", "message"):
        assert key in finding
    assert report["summary"]["error"] >= 1
    target = tmp_path / "report.json"
    assert run(["analyze", BROKEN, "--format", "json", "--output", target], capsys, monkeypatch=monkeypatch)[0] == 1
    assert json.loads(target.read_text()) == report


def test_same_input_same_json(capsys, monkeypatch):
    first = run(["analyze", SAMPLES / "unet_block.onnx", "--format", "json"], capsys, monkeypatch=monkeypatch)[1]
    second = run(["analyze", SAMPLES / "unet_block.onnx", "--format", "json"], capsys, monkeypatch=monkeypatch)[1]
    assert first == second


def test_explain_and_rules(capsys):
    code, out, _ = run(["explain", "ic102"], capsys)
    assert code == 0 and "Formula" in out and "Fix" in out
    code, out, _ = run(["rules"], capsys)
    assert code == 0 and all(c in out for c in ("IC101", "IC112", "IC201", "IC301"))
    code, _, err = run(["explain", "IC999"], capsys)
    assert code == 2 and "unknown code" in err


def one_error_line(code, err):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("initcheck: error:"), err
    assert "Traceback" not in err


def test_missing_file(capsys, monkeypatch, tmp_path):
    one_error_line(*run(["analyze", tmp_path / "nope.onnx"], capsys, monkeypatch=monkeypatch)[::2])


def test_not_an_onnx_file(capsys, monkeypatch, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("this is not a protobuf")
    one_error_line(*run(["analyze", path], capsys, monkeypatch=monkeypatch)[::2])


def test_truncated_protobuf(capsys, monkeypatch, tmp_path):
    data = (SAMPLES / "unet_block.onnx").read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    one_error_line(*run(["analyze", path], capsys, monkeypatch=monkeypatch)[::2])


def test_unknown_format(capsys, monkeypatch, tmp_path):
    path = tmp_path / "weights.h5"
    path.write_bytes(b"\x89HDF\r\n")
    code, _, err = run(["analyze", path], capsys, monkeypatch=monkeypatch)
    one_error_line(code, err)
    assert "not a model file initcheck reads" in err


def test_dynamic_dims_need_input_and_bad_input_option(capsys, monkeypatch, tmp_path):
    path = tiny_model(tmp_path / "dyn.onnx", dims=("N", "features"))
    code, _, err = run(["analyze", path], capsys, monkeypatch=monkeypatch)
    one_error_line(code, err)
    assert "--input x=1x<features>" in err  # the batch filled in, the size to give named
    assert run(["analyze", path, "--input", "x=8x4"], capsys, monkeypatch=monkeypatch)[0] == 0
    for bad in ("x=8xfour", "8x4", "y=8x4", "x=0x4"):
        one_error_line(*run(["analyze", path, "--input", bad], capsys, monkeypatch=monkeypatch)[::2])


def test_batch_dim_defaults_to_one(capsys, monkeypatch, tmp_path):
    path = tiny_model(tmp_path / "batch.onnx", dims=("batch_size", 4))
    code, out, _ = run(["analyze", path, "--format", "json"], capsys, monkeypatch=monkeypatch)
    assert code == 0 and json.loads(out)["inputs"]["x"] == [1, 4]


def test_unknown_custom_op_is_reported_not_fatal(capsys, monkeypatch, tmp_path):
    path = tiny_model(tmp_path / "custom.onnx", op="FancyAct", domain="com.example", dims=(2, 4))
    code, out, _ = run(["analyze", path, "--format", "json"], capsys, monkeypatch=monkeypatch)
    report = json.loads(out)
    assert code == 0 and report["coverage"]["unsupported"] == {"com.example::FancyAct": 1}
    assert any(f["code"] == "IC301" for f in report["findings"])


def test_nan_weights_are_an_error_finding(capsys, monkeypatch, tmp_path):
    w = np.ones((4, 4), np.float32)
    w[0, 0] = np.nan
    path = tiny_model(tmp_path / "nan.onnx", weight=w, dims=(2, 4))
    code, out, _ = run(["analyze", path, "--format", "json"], capsys, monkeypatch=monkeypatch)
    assert code == 1 and any(f["code"] == "IC201" for f in json.loads(out)["findings"])


def test_constant_weights(capsys, monkeypatch, tmp_path):
    path = tiny_model(tmp_path / "const.onnx", weight=np.full((4, 4), 0.5, np.float32), dims=(2, 4))
    code, out, _ = run(["analyze", path, "--format", "json"], capsys, monkeypatch=monkeypatch)
    found = [f for f in json.loads(out)["findings"] if f["code"] == "IC202"]
    assert found and found[0]["severity"] == "error"


def test_input_file_is_never_modified(capsys, monkeypatch, tmp_path):
    path = tmp_path / "copy.onnx"
    path.write_bytes((SAMPLES / "dcgan_generator.onnx").read_bytes())
    before = (hashlib.sha256(path.read_bytes()).hexdigest(), os.stat(path).st_mtime_ns)
    run(["analyze", path, "--format", "json", "--output", tmp_path / "r.json"], capsys, monkeypatch=monkeypatch)
    run(["analyze", path, "--all-nodes", "--train"], capsys, monkeypatch=monkeypatch)
    assert (hashlib.sha256(path.read_bytes()).hexdigest(), os.stat(path).st_mtime_ns) == before


def test_external_data_is_loaded_and_confined(capsys, monkeypatch, tmp_path):
    model = onnx.load(str(SAMPLES / "relu_mlp_he.onnx"))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert run(["analyze", tmp_path / "ext.onnx"], capsys, monkeypatch=monkeypatch)[0] == 0
    escaped = onnx.load(str(tmp_path / "ext.onnx"), load_external_data=False)
    for tensor in escaped.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside.bin"
    onnx.save(escaped, str(tmp_path / "escape.onnx"))
    code, _, err = run(["analyze", tmp_path / "escape.onnx"], capsys, monkeypatch=monkeypatch)
    one_error_line(code, err)
    assert "outside the model's folder" in err


def test_usage_errors_exit_2(capsys):
    assert main(["analyze"]) == 2
    assert main(["analyze", "x.onnx", "--fail-on", "sometimes"]) == 2


def test_console_script_and_module_entry_points():
    for cmd in ([sys.executable, "-m", "initcheck", "rules"],):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "IC101" in result.stdout


def test_a_flag_that_cannot_act_is_an_error_never_ignored(capsys, monkeypatch):
    code, out, err = run(
        ["analyze", HEALTHY, "--no-probe", "--seeds", "8", "--device", "cpu"], capsys, monkeypatch=monkeypatch
    )
    assert code == 2 and out == ""
    assert err.strip() == (
        "initcheck: error: --device, --seeds: probe setting(s) given with --no-probe; drop one or the other"
    )
    # without torch the probe cannot run: asked for a device, that is an error; otherwise a note in the report
    monkeypatch.setattr("initcheck.options._importable", lambda module: module != "torch")
    code, out, err = run(["analyze", HEALTHY, "--device", "cuda"], capsys, monkeypatch=monkeypatch)
    assert code == 2 and "--device cuda: the probe needs torch" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(["analyze", HEALTHY, "--format", "json"], capsys, monkeypatch=monkeypatch)
    report = json.loads(out)
    assert code == 0 and report["probe"] is None
    assert err.startswith("initcheck: probe skipped: torch not installed")  # said at the start, on stderr
    assert any(n.startswith("probe skipped: torch not installed") for n in report["notes"])


def test_options_resolve_flags_over_config_over_defaults(tmp_path):
    from initcheck.config import load
    from initcheck.options import ProbeOptions, resolve

    path = tmp_path / ".initcheck.yaml"
    path.write_text("fail_on: warning\nprobe: {seeds: 8, batch: 4}\nmodels:\n  m.onnx: {inputs: {x: 1x3}, degree: 5}\n")
    config = load(path).for_model(tmp_path / "m.onnx")
    options = resolve(config, shapes={"y": ((2,), None)}, probe_flags={"seeds": 2, "device": None}, fail_on=None)
    assert options.fail_on == "warning" and options.degree == 5
    assert options.shapes == {"x": ((1, 3), None), "y": ((2,), None)}
    assert options.probe == ProbeOptions(seeds=2, batch=4)  # the flag over the config over the default
    assert resolve(config, probe=False).probe is None
