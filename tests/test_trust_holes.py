"""Issue 12: the promises for files from anywhere. No code from a file runs without --trust-pickle (planted pickles in
every member of every archive, pickled weights/constants, torchbind objects, shape expressions sympy would evaluate,
graph call targets, guard code); bombs and lying lengths are refused before anything is inflated; inputs that do not
fit the model and unwritable outputs are one-line errors before any work; torch stays quiet; Ctrl-C exits 130;
valid files (control inputs with empty dims, content-named formats, the Hugging Face cache layout) load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import SAMPLES
from fuzz import evil_pickle
from hostile_corpus import EITHER, corpus, healthy_cases, rewrite_zip
from onnx import TensorProto, helper, numpy_helper
from test_hostile_inputs import assert_fails_safely, run_cli

PEAK_LIMIT_MB = 1024
TIME_LIMIT_S = 20

# Runs every case in one fresh interpreter (as a user's CLI would), one JSON line per case, then the peak RSS.
# Peak memory is this process's own high-water mark (VmHWM): ru_maxrss would include the forked pytest parent.
DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys
    from initcheck.cli import main

    def peak_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    for name, path, args in json.loads(sys.stdin.read()):
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(["analyze", path, "--no-probe", "--format", "json", "--time-limit", sys.argv[1], *args])
        print(json.dumps({"name": name, "code": code, "err": err.getvalue()}))
    print(json.dumps({"peak_mb": peak_mb()}))
""")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    marker = folder / "PWNED"
    files, cases = corpus(folder, marker)
    return folder, marker, files, cases


def _drive(cases, folder: Path) -> tuple[list[dict], float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    env.pop("INITCHECK_DEBUG", None)  # the shipped behaviour
    payload = json.dumps([[c.name, str(c.path), c.args] for c in cases])
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(TIME_LIMIT_S)],
        input=payload,
        capture_output=True,
        text=True,
        env=env,
        cwd=folder,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return lines[:-1], lines[-1]["peak_mb"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc (Linux)")
def test_hostile_corpus_is_refused_in_one_line_within_bounded_memory(hostile):
    """Every planted, bombed, lying or code-naming file: exit 2 with one line saying why (or, for a planted member
    the loader never reads, a normal analysis), the marker never created, the whole corpus refused under 1 GiB of
    peak memory and each file under the 20 s time limit (a slower refusal would end in a time-limit error)."""
    folder, marker, _, cases = hostile
    results, peak_mb = _drive(cases, folder)
    assert len(results) == len(cases) >= 50
    for case, result in zip(cases, results):
        code, err = result["code"], result["err"]
        lines = err.strip().splitlines()
        assert "Traceback" not in err and "internal error" not in err and "time limit" not in err, f"{case.name}: {err}"
        if case.refused is None:
            assert code in (0, 1) and not lines, f"{case.name}: exit {code} {err}"
        elif case.refused == EITHER:
            assert code in (0, 1, 2) and (code != 2 or len(lines) == 1), f"{case.name}: {err}"
        else:
            assert code == 2 and len(lines) == 1 and case.refused in lines[0], f"{case.name}: exit {code} {err}"
    assert not marker.exists(), "a planted payload ran"
    assert peak_mb < PEAK_LIMIT_MB, f"peak {peak_mb:.0f} MB"
    refused = sum(r["code"] == 2 for r in results)
    assert refused >= 35  # most of the corpus is refused outright: the test is not vacuous


def test_planted_pickles_never_run_with_the_probe_either(hostile, monkeypatch):
    """The probe executes the program: guard code from the file is dropped, nothing planted runs."""
    folder, marker, _, cases = hostile
    monkeypatch.syspath_prepend(str(folder))
    for case in cases:
        if case.refused in (None, EITHER) and case.path.suffix == ".pt2":
            code, _, err = run_cli(["analyze", case.path, "--seeds", "1", "--batch", "2", *case.args], monkeypatch)
            assert_fails_safely(code, err, case.name)
    assert not marker.exists()


def test_healthy_files_of_every_format_still_analyse(hostile, monkeypatch):
    folder, _, files, _ = hostile
    monkeypatch.syspath_prepend(str(folder))
    for case in healthy_cases(files):
        code, out, err = run_cli(["analyze", case.path, "--no-probe", "--format", "json", *case.args], monkeypatch)
        assert code in (0, 1) and not err, f"{case.name}: {err}"
        assert len(json.loads(out)["layers"]) >= 2


def test_pickled_tensors_load_untrusted_and_trust_lifts_the_guard(hostile, tmp_path, monkeypatch):
    """A weight torch.export stored as a pickled tensor loads without --trust-pickle (weights_only allows it); with
    --trust-pickle the guard is lifted entirely (here a planted payload then runs: that is what trusting means)."""
    import io
    import zipfile

    import torch

    folder, _, files, cases = hostile
    pt2 = files["pt2"]
    config_name = next(n for n in zipfile.ZipFile(pt2).namelist() if n.endswith("model_weights_config.json"))
    config = json.loads(zipfile.ZipFile(pt2).read(config_name))
    first = next(iter(config["config"]))
    config["config"][first]["use_pickle"] = True
    member = f"{config_name.rsplit('/', 1)[0]}/{config['config'][first]['path_name']}"
    buffer = io.BytesIO()
    torch.save(torch.nn.Parameter(torch.randn(8, 3, 3, 3)), buffer)
    path = rewrite_zip(
        pt2, tmp_path / "pickled_weight.pt2", {config_name: json.dumps(config).encode(), member: buffer.getvalue()}
    )
    code, _, err = run_cli(["analyze", path, "--no-probe"], monkeypatch)
    assert code in (0, 1) and not err, err

    trusted_marker = tmp_path / "trusted"
    opaque = next(c for c in cases if "opaque" in c.name)
    with zipfile.ZipFile(opaque.path) as archive:
        member = next(n for n in archive.namelist() if "constants/" in n and n.rsplit("/", 1)[-1].startswith("opaque"))
    rewrite_zip(opaque.path, tmp_path / "opaque.pt2", {member: evil_pickle(str(trusted_marker))})
    run_cli(["analyze", tmp_path / "opaque.pt2", "--no-probe", "--trust-pickle"], monkeypatch)
    assert trusted_marker.exists()


# -- inputs that do not fit -----------------------------------------------------------------------------------


def test_input_names_and_shapes_must_fit_every_frontend(hostile, monkeypatch):
    folder, _, files, _ = hostile
    monkeypatch.syspath_prepend(str(folder))
    bad = [
        (files["pt2"], ["--input", "y=1x2"], "no input named 'y'"),
        (files["pt2"], ["--input", "x=1x3x9x8"], "exported with x of shape 1x3x8x8"),
        (files["onnx"], ["--input", "x=1x3x8x9"], "fixed at 8"),
        (files["onnx"], ["--input", "x=1x3x8"], "4 dimensions"),
        (files["onnx"], ["--input", "y=1x2"], "no input named 'y'"),
        (files["torchscript"], ["--input", "y=1x3x8x8"], "no input named 'y' (inputs: x)"),
        (files["state_dict"], ["--arch", "smallnet:make", "--input", "y=1x3x8x8"], "no parameter 'y'"),
    ]
    for path, args, phrase in bad:
        code, out, err = run_cli(["analyze", path, "--no-probe", *args], monkeypatch)
        assert code == 2 and err.count("\n") == 1 and phrase in err and not out, f"{path.name} {args}: {err}"
    assert run_cli(["analyze", files["pt2"], "--no-probe", "--input", "x=1x3x8x8"], monkeypatch)[0] in (0, 1)


def _model(inputs, nodes, outputs, initializers=(), opset=18) -> onnx.ModelProto:
    return helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, list(initializers)),
        opset_imports=[helper.make_opsetid("", opset)],
    )


def test_every_missing_dimension_is_named_in_one_message(tmp_path, monkeypatch):
    inputs = [
        helper.make_tensor_value_info("ids", TensorProto.FLOAT, ["batch", "seq"]),
        helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["batch", "seq2"]),
    ]
    model = _model(
        inputs,
        [helper.make_node("Add", ["ids", "extra"], ["y"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    onnx.save(model, str(tmp_path / "m.onnx"))
    code, _, err = run_cli(["analyze", tmp_path / "m.onnx", "--no-probe"], monkeypatch)
    assert code == 2 and "--input ids=1x<seq>" in err and "--input extra=1x<seq2>" in err, err


def test_sequence_and_optional_inputs_are_named_as_unsupported(tmp_path, monkeypatch):
    seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, [1, 4])
    model = _model(
        [seq],
        [helper.make_node("SequenceAt", ["s", "zero"], ["y"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(0, np.int64), "zero")],
    )
    onnx.save(model, str(tmp_path / "seq.onnx"))
    code, _, err = run_cli(["analyze", tmp_path / "seq.onnx", "--no-probe", "--input", "s=1x4"], monkeypatch)
    assert code == 2 and "'s' is a sequence" in err and "element type" not in err, err


def test_empty_control_inputs_are_valid(tmp_path, monkeypatch):
    """Reduce* axes of shape [0], CastLike's type example of shape [0] and an unused input of shape [0] carry no
    signal: the model analyses (the onnx node tests' CastLike and Reduce cases were refused before)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.5, (4, 4)).astype(np.float32), "w")
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [0])
    like = helper.make_tensor_value_info("like", TensorProto.FLOAT, [0])
    unused = helper.make_tensor_value_info("unused", TensorProto.FLOAT, [0])  # as in CastLike's expanded form
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("CastLike", ["h", "like"], ["c"]),
        helper.make_node("ReduceSum", ["c", "axes"], ["y"], keepdims=1),
    ]
    model = _model([x, axes, like, unused], nodes, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    onnx.save(model, str(tmp_path / "control.onnx"))
    code, out, err = run_cli(["analyze", tmp_path / "control.onnx", "--no-probe", "--format", "json"], monkeypatch)
    assert code in (0, 1) and not err, err
    # a signal input with an empty dimension is still refused: nothing would flow
    signal = _model(
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 0])],
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    onnx.save(signal, str(tmp_path / "empty.onnx"))
    code, _, err = run_cli(["analyze", tmp_path / "empty.onnx", "--no-probe"], monkeypatch)
    assert code == 2 and "nothing would flow" in err


# -- formats by content ----------------------------------------------------------------------------------


def test_formats_are_recognised_by_content(hostile, tmp_path, monkeypatch):
    """A TorchScript zip named .jit (as silero-vad ships) is TorchScript; an ONNX file without a suffix is ONNX."""
    folder, _, files, _ = hostile
    jit = tmp_path / "model.jit"
    jit.write_bytes(files["torchscript"].read_bytes())
    code, _, err = run_cli(["analyze", jit, "--no-probe", "--input", "x=1x3x8x8"], monkeypatch)
    assert code in (0, 1) and not err, err
    bare = tmp_path / "model"
    bare.write_bytes(files["onnx"].read_bytes())
    assert run_cli(["analyze", bare, "--no-probe"], monkeypatch)[0] in (0, 1)


# -- outputs, baselines, interrupts, noise --------------------------------------------------------------


@pytest.mark.parametrize(
    "flag,target",
    [
        ("--output", "missing/r.json"),
        ("--write-baseline", "missing/b.json"),
        ("--output", "afile/r.json"),
        ("--output", "afolder"),
    ],
)
def test_output_paths_are_checked_before_the_analysis(flag, target, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "afolder").mkdir()
    calls = []
    import initcheck.api

    monkeypatch.setattr(initcheck.api, "analyze", lambda *a, **k: calls.append(a))
    code, out, err = run_cli(
        ["analyze", SAMPLES / "relu_mlp_he.onnx", "--no-probe", flag, tmp_path / target], monkeypatch
    )
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"initcheck: error: {flag}") and not out, err
    assert not calls  # refused before any model was analysed


def test_a_baseline_that_is_not_one_is_a_usage_error(tmp_path, monkeypatch):
    for name, content in (
        ("binary.json", b"\xff\xfe\x00garbage"),
        ("list.json", b"[1, 2]"),
        ("models.json", b'{"initcheck_baseline": 1, "models": {"m": [1]}}'),
    ):
        (tmp_path / name).write_bytes(content)
        code, _, err = run_cli(
            ["analyze", SAMPLES / "relu_mlp_he.onnx", "--no-probe", "--baseline", tmp_path / name], monkeypatch
        )
        assert code == 2 and "--baseline" in err and "internal error" not in err and err.count("\n") == 1, err


def test_ctrl_c_exits_130_with_no_output(monkeypatch):
    import initcheck.api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(initcheck.api, "analyze_with", interrupted)
    code, out, err = run_cli(["analyze", SAMPLES / "relu_mlp_he.onnx", "--no-probe"], monkeypatch)
    assert code == 130 and not out and err.strip() == "initcheck: interrupted"


DATA_DEPENDENT = textwrap.dedent("""
    import torch
    from torch import nn

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            h = self.lin(x)
            if h.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
                return h.relu()
            return h

    def make():
        return Branchy()
""")


def test_torch_stays_quiet_on_stderr(hostile, tmp_path):
    """A planted .pt2 and a model torch.export cannot trace: exactly one `initcheck: error:` line on stderr, no
    logging traceback, no FX graph dump, no warnings, no URL cut mid-way."""
    folder, _, _, cases = hostile
    (tmp_path / "branchy.py").write_text(DATA_DEPENDENT)
    import torch

    torch.save({"lin.weight": torch.randn(4, 4), "lin.bias": torch.zeros(4)}, tmp_path / "b.pt")
    planted = next(c for c in cases if "sample_inputs" in c.name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(folder)])}
    env.pop("INITCHECK_DEBUG", None)
    for args in (
        ["analyze", str(planted.path), "--no-probe"],
        ["analyze", str(tmp_path / "b.pt"), "--arch", "branchy:make", "--input", "x=1x4", "--no-probe"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "initcheck", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("initcheck: error:"), done.stderr
        assert "http" not in lines[0]


# -- external data through the Hugging Face cache layout ---------------------------------------------------


def _hub_cache(root: Path) -> Path:
    """snapshots/<rev>/{model.onnx, model.onnx_data} as symlinks into blobs/<hash>, as the hub downloads them."""
    blobs, snapshot = root / "blobs", root / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    model = onnx.load(str(SAMPLES / "relu_mlp_he.onnx"))
    onnx.save(model, str(blobs / "tmp.onnx"), save_as_external_data=True, location="model.onnx_data", size_threshold=0)
    (blobs / "tmp.onnx").rename(blobs / "1f2e")
    (blobs / "model.onnx_data").rename(blobs / "9a8b")
    (snapshot / "model.onnx").symlink_to("../../blobs/1f2e")
    (snapshot / "model.onnx_data").symlink_to("../../blobs/9a8b")
    return snapshot / "model.onnx"


def test_hub_cache_layout_loads_and_links_elsewhere_are_refused(tmp_path, monkeypatch):
    path = _hub_cache(tmp_path / "models--org--net")
    assert run_cli(["analyze", path, "--no-probe"], monkeypatch)[0] == 0
    # a link to a file outside both the snapshot and the blobs folder: refused
    secret = tmp_path / "secret.bin"
    secret.write_bytes((tmp_path / "models--org--net" / "blobs" / "9a8b").read_bytes())
    data = path.parent / "model.onnx_data"
    data.unlink()
    data.symlink_to(secret)
    code, _, err = run_cli(["analyze", path, "--no-probe"], monkeypatch)
    assert code == 2 and "links outside the model's folder" in err, err
    # a FIFO (or device) in place of the data: refused without opening it (opening a FIFO would block)
    data.unlink()
    os.mkfifo(data)
    code, _, err = run_cli(["analyze", path, "--no-probe", "--time-limit", "20"], monkeypatch)
    assert code == 2 and "not a regular file" in err, err
