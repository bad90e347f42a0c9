"""Hostile and broken inputs (issue 7): fuzzed ONNX protobufs and torch archives, huge declared shapes, external
data that leaves the model's folder, odd numbers (NaN, denormals, zeros, empty tensors, fp16/bf16, quantized
graphs). Every run ends with exit 0/1, or exit 2 and exactly one clear line; nothing is executed from a file."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import resource
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import SAMPLES
from fuzz import evil_pickle, mutate_onnx, mutate_zip
from hostile_corpus import base_files
from onnx import TensorProto, helper, numpy_helper

from initcheck.cli import main

ONNX_SAMPLES = sorted(SAMPLES.glob("*.onnx"))
ROOT = SAMPLES.parent


def run_cli(args, monkeypatch) -> tuple[int, str, str]:
    monkeypatch.delenv("INITCHECK_DEBUG", raising=False)  # the shipped behaviour: bugs would say "internal error"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def assert_fails_safely(code: int, err: str, label: str) -> None:
    """Exit 0/1 with nothing on stderr, or exit 2 with one `initcheck: error:` line that is not a bug report."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and "internal error" not in err, f"{label}: {err}"
    assert "time limit" not in err, f"{label}: hung ({err.strip()})"
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("initcheck: error:"), f"{label}: {err}"
    else:
        assert code in (0, 1) and not lines, f"{label}: exit {code}, {err}"


# -- fuzzed ONNX files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", range(8))
def test_fuzzed_onnx_files_fail_safely(batch, tmp_path, monkeypatch):
    """100 seeded mutations per batch (truncation, bit flips, tensor and graph field mutations) of every sample;
    --time-limit is the per-file bound that turns a hang into a failure here."""
    outcomes = []
    for seed in range(batch * 100, batch * 100 + 100):
        rng = random.Random(seed)
        source = ONNX_SAMPLES[seed % len(ONNX_SAMPLES)]
        data, label = mutate_onnx(source.read_bytes(), rng)
        path = tmp_path / f"fuzz{seed}.onnx"
        path.write_bytes(data)
        code, out, err = run_cli(["analyze", path, "--no-probe", "--format", "json", "--time-limit", "30"], monkeypatch)
        assert_fails_safely(code, err, f"seed {seed} ({source.name}, {label})")
        if code != 2:
            assert json.loads(out)["layers"] is not None
        outcomes.append(code)
    assert 2 in outcomes  # the mutations do break files: the test is not vacuous


# -- fuzzed torch archives -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """A .pt2, a TorchScript archive and a zip state dict (among others) of one small conv net, with its factory
    module `smallnet`."""
    folder = tmp_path_factory.mktemp("archives")
    base_files(folder)
    return folder


ARCHIVE_ARGS = {
    "small.pt2": [],
    "script.pt": ["--input", "x=1x3x8x8"],
    "weights.pt": ["--arch", "smallnet:make", "--input", "x=1x3x8x8"],
}


@pytest.mark.parametrize("name", sorted(ARCHIVE_ARGS))
def test_fuzzed_torch_archives_fail_safely_and_never_unpickle(name, archives, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(archives))
    marker = tmp_path / "pwned"
    original = (archives / name).read_bytes()
    code, _, err = run_cli(["analyze", archives / name, "--no-probe", *ARCHIVE_ARGS[name]], monkeypatch)
    assert code in (0, 1), err  # the undamaged archive analyses
    outcomes = []
    for seed in range(30):
        data, label = mutate_zip(original, random.Random(seed), str(marker))
        path = tmp_path / f"fuzz{seed}{Path(name).suffix}"
        path.write_bytes(data)
        code, _, err = run_cli(
            ["analyze", path, "--no-probe", "--format", "json", "--time-limit", "60", *ARCHIVE_ARGS[name]], monkeypatch
        )
        assert_fails_safely(code, err, f"{name} seed {seed} ({label})")
        outcomes.append(code)
        assert not marker.exists(), f"{name} seed {seed} ({label}) executed a planted pickle"
    assert 2 in outcomes


def test_planted_pickle_in_every_member_is_refused(archives, tmp_path, monkeypatch):
    """Every .pkl member of the state-dict archive replaced by an os.system payload: refused, never run."""
    import zipfile

    monkeypatch.syspath_prepend(str(archives))
    marker = tmp_path / "pwned"
    source = zipfile.ZipFile(archives / "weights.pt")
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as target:
        for member in source.namelist():
            target.writestr(member, evil_pickle(str(marker)) if member.endswith(".pkl") else source.read(member))
    code, _, err = run_cli(["analyze", path, *ARCHIVE_ARGS["weights.pt"]], monkeypatch)
    assert_fails_safely(code, err, "planted pickle")
    assert code == 2 and not marker.exists()


# -- sizes and time ---------------------------------------------------------------------------------------


def _save(graph, path: Path, opset: int = 17) -> Path:
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def _huge_models(folder: Path) -> dict[str, Path]:
    """Files of a few hundred bytes that declare tensors no machine could hold."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(np.ones((16, 16), np.float32), "w")
    models = {}
    big_input = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 10**9, 16])
    models["input"] = _save(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [big_input], [y]), folder / "input.onnx"
    )
    lying = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[10**6, 10**6], raw_data=b"\0" * 64)
    models["weight"] = _save(
        helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [lying]),
        folder / "weight.onnx",
    )
    shape = numpy_helper.from_array(np.array([10**6, 10**6], np.int64), "shape")
    folds = {
        "constant_of_shape": [helper.make_node("ConstantOfShape", ["shape"], ["c"])],
        "expand": [helper.make_node("Expand", ["one", "shape"], ["c"])],
        "tile": [helper.make_node("Tile", ["one", "shape"], ["c"])],
        "range": [helper.make_node("Range", ["zero", "limit", "one1"], ["c"])],
    }
    constants = [
        shape,
        numpy_helper.from_array(np.ones((1, 1), np.float32), "one"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(10**12, np.int64), "limit"),
        numpy_helper.from_array(np.array(1, np.int64), "one1"),
    ]
    for name, nodes in folds.items():
        # the huge constant only scales a sum: folding it would be the only way to run out of memory
        tail = [
            helper.make_node("ReduceSum", ["c"], ["s"], keepdims=0),
            helper.make_node("Cast", ["s"], ["sf"], to=1),
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Mul", ["h", "sf"], ["y"]),
        ]
        models[name] = _save(helper.make_graph(nodes + tail, "g", [x], [y], [w, *constants]), folder / f"{name}.onnx")
    return models


def test_huge_declared_tensors_are_refused_within_bounded_memory(tmp_path):
    """In a child process limited to 3 GiB of address space: each file is refused in one line (or analysed
    around the unfoldable constant), never an allocation of its declared size."""
    models = _huge_models(tmp_path)

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    env = {k: v for k, v in os.environ.items() if k != "INITCHECK_DEBUG"}
    env["OPENBLAS_NUM_THREADS"] = "1"  # each BLAS thread reserves address space
    for name, path in models.items():
        done = subprocess.run(
            [sys.executable, "-m", "initcheck", "analyze", str(path), "--no-probe", "--format", "json"],
            capture_output=True,
            text=True,
            preexec_fn=limit_memory,
            env=env,
            timeout=120,
            cwd=ROOT,
        )
        assert_fails_safely(done.returncode, done.stderr, name)
        if name in ("input", "weight"):
            assert done.returncode == 2 and "more than the limit" in done.stderr, done.stderr


@pytest.mark.parametrize(
    "op, inputs",
    [
        ("ConstantOfShape", [np.array([8192, 8192], np.int64)]),
        ("Expand", [np.ones((1, 1), np.float32), np.array([8192, 8192], np.int64)]),
        ("Tile", [np.ones((2, 2), np.float32), np.array([8192, 8192], np.int64)]),
        ("Range", [np.array(0, np.int64), np.array(10**9, np.int64), np.array(1, np.int64)]),
        ("OneHot", [np.arange(8192, dtype=np.int64), np.array(8192, np.int64), np.array([0, 1], np.float32)]),
    ],
)
def test_folding_never_builds_a_huge_constant(op, inputs):
    """A few bytes may ask for 64M+ elements; with no shape inferred, folding declines before allocating."""
    import tracemalloc

    from initcheck.frontends.onnx_load import fold_node

    names = [f"i{k}" for k in range(len(inputs))]
    node = helper.make_node(op, names, ["out"])
    tracemalloc.start()
    try:
        assert fold_node(node, dict(zip(names, inputs)), 17, {}) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20
    small = [np.array([4, 4], np.int64)] if op == "ConstantOfShape" else None
    if small:  # and still folds what is small
        assert fold_node(node, dict(zip(names, small)), 17, {})[0].shape == (4, 4)


def test_max_elements_from_flag_and_config(tmp_path, monkeypatch):
    sample = SAMPLES / "unet_block.onnx"
    code, _, err = run_cli(["analyze", sample, "--no-probe", "--max-elements", "1000"], monkeypatch)
    assert code == 2 and "more than the limit of 1e+03" in err and "--max-elements" in err
    (tmp_path / ".initcheck.yaml").write_text("limits:\n  max_elements: 1000\n")
    copy = tmp_path / "unet.onnx"
    copy.write_bytes(sample.read_bytes())
    code, _, err = run_cli(["analyze", copy, "--no-probe"], monkeypatch)
    assert code == 2 and "more than the limit" in err
    code, _, err = run_cli(["analyze", copy, "--no-probe", "--max-elements", "100000000"], monkeypatch)
    assert code in (0, 1), err  # the flag overrides the config
    (tmp_path / ".initcheck.yaml").write_text("limits:\n  max_elements: -5\n")
    code, _, err = run_cli(["analyze", copy, "--no-probe"], monkeypatch)
    assert code == 2 and "limits.max_elements" in err and ".initcheck.yaml" in err


def test_time_limit_stops_one_model_and_the_others_go_on(tmp_path, monkeypatch):
    """A rule or probe that runs away cannot hold a CI job: the model fails in one line, the next one runs."""
    import initcheck.api

    slow = SAMPLES / "unet_block.onnx"
    real = initcheck.api.run_symbolic

    def stuck(graph, *args):
        if "unet" in graph.source:
            while True:  # an analysis that never ends, inside the `except Exception` of nothing
                pass
        return real(graph, *args)

    monkeypatch.setattr(initcheck.api, "run_symbolic", stuck)
    code, out, err = run_cli(
        ["analyze", slow, SAMPLES / "relu_mlp_he.onnx", "--no-probe", "--time-limit", "0.5", "--format", "json"],
        monkeypatch,
    )
    assert code == 2
    assert "unet_block.onnx: analysis stopped after the time limit of 0.5 s" in err
    results = json.loads(out)
    assert [Path(m["model"]).name for m in results["models"]] == ["relu_mlp_he.onnx"]
    assert len(results["models"][0]["layers"]) > 0 and "time limit" in results["errors"][0]["error"]


# -- external data and symlinks ---------------------------------------------------------------------------


def _with_external_data(folder: Path) -> Path:
    model = onnx.load(str(SAMPLES / "relu_mlp_he.onnx"))
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    return folder / "model.onnx"


def test_symlinked_external_data_may_not_lead_outside_the_folder(tmp_path, monkeypatch):
    inside, outside = tmp_path / "model", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    path = _with_external_data(inside)
    assert run_cli(["analyze", path, "--no-probe"], monkeypatch)[0] == 0
    (inside / "weights.bin").rename(outside / "weights.bin")
    (inside / "weights.bin").symlink_to(outside / "weights.bin")
    code, _, err = run_cli(["analyze", path, "--no-probe"], monkeypatch)
    assert_fails_safely(code, err, "symlink out")
    assert code == 2 and "outside the model's folder" in err
    # a link that stays inside the folder is fine
    (inside / "weights.bin").unlink()
    (outside / "weights.bin").rename(inside / "real.bin")
    (inside / "weights.bin").symlink_to(inside / "real.bin")
    assert run_cli(["analyze", path, "--no-probe"], monkeypatch)[0] == 0


@pytest.mark.parametrize("location", ["/etc/passwd", "../../etc/passwd", "sub/../../x.bin", ""])
def test_external_data_locations_outside_are_refused(location, tmp_path, monkeypatch):
    path = _with_external_data(tmp_path)
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(path))
    code, _, err = run_cli(["analyze", path, "--no-probe"], monkeypatch)
    assert_fails_safely(code, err, location)
    assert code == 2 and ("outside the model's folder" in err or "no usable external data location" in err)


def test_external_data_reads_no_more_than_the_tensor(tmp_path, monkeypatch):
    """Without a length, a tensor takes its own size from the file, not the whole (possibly huge) file."""
    path = _with_external_data(tmp_path)
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        keep = [(e.key, e.value) for e in tensor.external_data if e.key != "length"]
        del tensor.external_data[:]
        for key, value in keep:
            tensor.external_data.add(key=key, value=value)
    onnx.save(model, str(path))
    with open(tmp_path / "weights.bin", "ab") as f:
        f.write(b"\0" * (1 << 20))  # trailing junk after the last tensor
    assert run_cli(["analyze", path, "--no-probe"], monkeypatch)[0] == 0


# -- nothing modified ---------------------------------------------------------------------------------------


def _fingerprints(folder: Path) -> dict[str, tuple[str, int, int]]:
    import hashlib

    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns, p.stat().st_mode)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_no_command_modifies_its_inputs(archives, tmp_path, monkeypatch):
    """Every input form and every file a run reads (external data, config, baseline) keeps its bytes, mtime and
    mode through every command, format and option; reports go only where --output says."""
    import shutil

    from safetensors.torch import save_file

    monkeypatch.syspath_prepend(str(archives))
    models, out = tmp_path / "models", tmp_path / "out"
    models.mkdir()
    out.mkdir()
    _with_external_data(models)
    for name in ("small.pt2", "script.pt"):
        shutil.copy(archives / name, models / name)
    import torch

    save_file(torch.load(archives / "weights.pt", weights_only=True), str(models / "weights.safetensors"))
    (models / "pyproject.toml").write_text(
        '[tool.initcheck]\nfail_on = "never"\n[tool.initcheck.models."script.pt"]\ninputs = {x = "1x3x8x8"}\n'
    )
    runs = {
        "model.onnx": [],
        "small.pt2": [],
        "script.pt": [],
        "weights.safetensors": ["--arch", "smallnet:make", "--input", "x=1x3x8x8"],
    }
    assert (
        run_cli(
            ["analyze", models / "model.onnx", "--no-probe", "--write-baseline", models / "baseline.json"], monkeypatch
        )[0]
        == 0
    )
    before = _fingerprints(models)
    for name, extra in runs.items():
        model = models / name
        commands = [
            ["analyze", model, "--seeds", "1", "--batch", "2"],
            ["analyze", model, "--no-probe", "--all-nodes", "--train"],
            ["analyze", model, "--no-probe", "--baseline", models / "baseline.json"],
            ["analyze", model, "--no-probe", "--write-baseline", out / f"{name}.baseline.json"],
            [
                "analyze",
                model,
                "--no-probe",
                *(
                    a
                    for suffix in ("json", "md", "sarif", "xml", "txt")
                    for a in ("--output", out / f"{name}.{suffix}")
                ),
            ],
            *(["analyze", model, "--no-probe", "--format", fmt] for fmt in ("json", "markdown", "sarif", "junit")),
        ]
        for command in commands:
            code, _, err = run_cli([*command, *extra], monkeypatch)
            assert code in (0, 1), f"{command}: {err}"
    assert run_cli(["explain", "IC501"], monkeypatch)[0] == 0 and run_cli(["rules"], monkeypatch)[0] == 0
    assert _fingerprints(models) == before
    assert len(list(out.iterdir())) == 4 * 6  # 5 reports + 1 baseline per model, nothing else (no temp files)


# -- numbers ------------------------------------------------------------------------------------------------

WIDTH = 64


def _he(rng, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal((WIDTH, WIDTH)) * np.sqrt(2 / WIDTH) * scale).astype(np.float32)


def _mlp(path: Path, w1, w2, elem=TensorProto.FLOAT, before=(), after=(), inits=(), x="x", y="y") -> Path:
    """x @ w1 -> relu -> @ w2, with optional nodes before (producing `x`) and after (reading `y`)."""
    nodes = [
        *before,
        helper.make_node("MatMul", [x, "w1"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("MatMul", ["b", "w2"], [y]),
        *after,
    ]
    inputs = [helper.make_tensor_value_info("input", elem, [4, WIDTH])]
    if not before:
        nodes[0].input[0] = "input"
    graph = helper.make_graph(
        nodes,
        "mlp",
        inputs,
        [helper.make_tensor_value_info("out" if after else y, elem, None)],
        [
            *(w if isinstance(w, TensorProto) else numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"))),
            *inits,
        ],
    )
    return _save(graph, path)


def _last_k(path: Path) -> float:
    import initcheck

    report = initcheck.analyze(path)
    return [r for r in report.layers if r.fan_in][-1].symbolic.K


def _monte_carlo(forward, samples: int = 20000) -> float:
    """E[y^2] of the output over unit-variance Gaussian inputs, in float64."""
    x = np.random.default_rng(7).standard_normal((samples, WIDTH))
    return float(np.mean(forward(x) ** 2))


def _relu_net(w1, w2):
    return lambda x: np.maximum(x @ w1.astype(np.float64), 0) @ w2.astype(np.float64)


@pytest.mark.parametrize("kind", ["fp16", "bf16"])
def test_half_precision_weights_are_analysed(kind, tmp_path):
    """fp16 graphs and bf16 weights (behind a Cast): the prediction matches a float64 Monte Carlo of the same
    rounded weights within 3% (MC standard error ~1%)."""
    rng = np.random.default_rng(1)
    w1, w2 = _he(rng), _he(rng)
    if kind == "fp16":
        w1, w2 = w1.astype(np.float16), w2.astype(np.float16)
        path = _mlp(tmp_path / "m.onnx", w1, w2, TensorProto.FLOAT16)
    else:

        def bf16(a, name):
            return helper.make_tensor(name, TensorProto.BFLOAT16, a.shape, a.ravel().tolist())

        path = _mlp(
            tmp_path / "m.onnx",
            bf16(w1, "w1"),
            bf16(w2, "w2"),
            x="xb",
            y="yb",
            before=[helper.make_node("Cast", ["input"], ["xb"], to=TensorProto.BFLOAT16)],
            after=[helper.make_node("Cast", ["yb"], ["out"], to=TensorProto.FLOAT)],
        )
        w1, w2 = (numpy_helper.to_array(onnx.load(str(path)).graph.initializer[i]).astype(np.float32) for i in (0, 1))
    predicted, measured = _last_k(path), _monte_carlo(_relu_net(w1, w2))
    assert abs(predicted / measured - 1) < 0.03, (predicted, measured)


def test_fake_quantized_graph_is_analysed_as_clipped_signal(tmp_path, monkeypatch):
    """QDQ: int8 weights through DequantizeLinear (folded) and the input through Quantize+Dequantize with a
    narrow range (+-1.5, so clipping matters): prediction vs Monte Carlo of the quantized network within 3%."""
    rng = np.random.default_rng(2)
    step_w, step_x = np.float32(3 * np.sqrt(2 / WIDTH) / 127), np.float32(1.5 / 127)
    q1, q2 = (np.clip(np.round(_he(rng) / step_w), -127, 127).astype(np.int8) for _ in range(2))
    zero = numpy_helper.from_array(np.int8(0), "z")
    before = [
        helper.make_node("QuantizeLinear", ["input", "sx", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "z"], ["x"]),
        helper.make_node("DequantizeLinear", ["q1", "sw", "z"], ["w1"]),
        helper.make_node("DequantizeLinear", ["q2", "sw", "z"], ["w2"]),
    ]
    inits = [
        numpy_helper.from_array(q1, "q1"),
        numpy_helper.from_array(q2, "q2"),
        zero,
        numpy_helper.from_array(step_w, "sw"),
        numpy_helper.from_array(step_x, "sx"),
    ]
    path = tmp_path / "qdq.onnx"
    graph = helper.make_graph(
        [
            *before,
            helper.make_node("MatMul", ["x", "w1"], ["a"]),
            helper.make_node("Relu", ["a"], ["b"]),
            helper.make_node("MatMul", ["b", "w2"], ["y"]),
        ],
        "qdq",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [4, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    _save(graph, path)
    w1, w2 = q1.astype(np.float64) * step_w, q2.astype(np.float64) * step_w

    def quantized(x):
        xq = np.clip(np.round(x / step_x), -128, 127) * step_x
        return _relu_net(w1, w2)(xq)

    predicted, measured = _last_k(path), _monte_carlo(quantized)
    assert abs(predicted / measured - 1) < 0.03, (predicted, measured)
    unclipped = _monte_carlo(_relu_net(w1, w2))
    assert measured < 0.8 * unclipped  # the clip is what the prediction had to get right
    code, out, err = run_cli(["analyze", path, "--no-probe", "--format", "json"], monkeypatch)
    assert code == 0 and not json.loads(out)["coverage"]["unsupported"], err


@pytest.mark.parametrize("op", ["QLinearConv", "MatMulInteger"])
def test_integer_quantized_graphs_are_reported_not_modeled(op, tmp_path, monkeypatch):
    zero_u, zero_s = numpy_helper.from_array(np.uint8(128), "zu"), numpy_helper.from_array(np.int8(0), "z")
    scale = numpy_helper.from_array(np.float32(0.02), "s")
    quantize = helper.make_node("QuantizeLinear", ["x", "s", "zu"], ["xq"])
    if op == "QLinearConv":
        weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.int8), "wq")
        nodes = [
            quantize,
            helper.make_node("QLinearConv", ["xq", "s", "zu", "wq", "s", "z", "s", "zu"], ["yq"]),
            helper.make_node("DequantizeLinear", ["yq", "s", "zu"], ["y"]),
        ]
        shape = [1, 3, 8, 8]
    else:
        weight = numpy_helper.from_array(np.ones((16, 16), np.int8), "wq")
        nodes = [
            quantize,
            helper.make_node("MatMulInteger", ["xq", "wq", "zu", "z"], ["acc"]),
            helper.make_node("Cast", ["acc"], ["y"], to=TensorProto.FLOAT),
        ]
        shape = [4, 16]
    graph = helper.make_graph(
        nodes,
        "int",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight, scale, zero_u, zero_s],
    )
    path = _save(graph, tmp_path / "int.onnx")
    code, out, err = run_cli(["analyze", path, "--no-probe", "--format", "json"], monkeypatch)
    assert code == 0, err
    report = json.loads(out)
    assert any(f"integer-quantized graph ({op})" in note for note in report["notes"])
    assert any(f["code"] == "IC301" and "QuantizeLinear" in f["message"] for f in report["findings"])


def test_denormal_zero_nan_and_empty_weights(tmp_path, monkeypatch):
    """Denormal weights: analysed with the exact (tiny) K and a vanishing-signal finding; zero weights: IC202;
    NaN/Inf: IC201; an empty constant in a concat: analysed as if absent; an empty input: one clear line."""
    rng = np.random.default_rng(3)
    tiny = _he(rng, 1e-39)
    assert np.all(np.abs(tiny[tiny != 0]) < np.finfo(np.float32).tiny)  # really denormal
    path = _mlp(tmp_path / "denormal.onnx", tiny, _he(rng))
    code, out, _ = run_cli(["analyze", path, "--no-probe", "--format", "json"], monkeypatch)
    report = json.loads(out)
    first = next(r for r in report["layers"] if r["fan_in"])
    expected = WIDTH * np.mean(tiny.astype(np.float64) ** 2) / 2  # K after ReLU: half the pre-activation's
    assert code == 1 and abs(first["second_moment"] / expected - 1) < 0.05
    assert any(f["code"] == "IC102" for f in report["findings"])

    for name, weight, code_expected in (
        ("zero", np.zeros((WIDTH, WIDTH), np.float32), "IC202"),
        ("nan", np.where(np.eye(WIDTH) > 0, np.nan, _he(rng)).astype(np.float32), "IC201"),
    ):
        code, out, _ = run_cli(
            ["analyze", _mlp(tmp_path / f"{name}.onnx", weight, _he(rng)), "--no-probe", "--format", "json"],
            monkeypatch,
        )
        assert code == 1 and any(f["code"] == code_expected for f in json.loads(out)["findings"])

    empty = numpy_helper.from_array(np.zeros((4, 0), np.float32), "empty")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("Concat", ["a", "empty"], ["y"], axis=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(_he(rng), "w"), empty],
    )
    code, out, err = run_cli(
        ["analyze", _save(graph, tmp_path / "empty.onnx"), "--no-probe", "--format", "json"], monkeypatch
    )
    assert code == 0, err
    layers = json.loads(out)["layers"]
    assert abs(layers[-1]["second_moment"] / layers[0]["second_moment"] - 1) < 1e-6

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 0])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    code, _, err = run_cli(["analyze", _save(graph, tmp_path / "empty_input.onnx"), "--no-probe"], monkeypatch)
    assert_fails_safely(code, err, "empty input")
    assert code == 2 and "empty dimension 1" in err


def test_probe_that_would_exhaust_memory_is_skipped_not_killed(monkeypatch):
    """An out-of-memory kill would lose the report: a probe that does not fit in half the machine's memory even at
    its smallest is skipped with IC403 and the symbolic results stay."""
    import initcheck
    import initcheck.probes.plan
    from initcheck.probes.common import ProbeOptions

    sample = SAMPLES / "unet_block.onnx"
    monkeypatch.setattr(initcheck.probes.plan, "_host_bytes", lambda: 4 << 10)  # a 4 KiB machine
    report = initcheck.analyze(sample, probe=ProbeOptions(batch=64, seeds=1))
    skipped = [f for f in report.findings if f.code == "IC403"]
    assert skipped and "give smaller input shapes" in skipped[0].message and report.probe is None and report.layers
    monkeypatch.setattr(initcheck.probes.plan, "_host_bytes", lambda: 4 << 30)
    report = initcheck.analyze(sample, probe=ProbeOptions(batch=64, seeds=1))
    assert report.probe is not None and not any(f.code == "IC403" for f in report.findings)


def test_a_failing_check_is_skipped_with_a_note_and_the_rest_stays(monkeypatch):
    import initcheck
    import initcheck.checks

    monkeypatch.delenv("INITCHECK_DEBUG", raising=False)
    sample = SAMPLES / "relu_mlp_glorot.onnx"
    expected = {f.code for f in initcheck.analyze(sample).findings}

    def broken(ctx):
        raise ValueError("math domain error")

    monkeypatch.setitem(initcheck.checks.CHECKS, "concat", replace(initcheck.checks.CHECKS["concat"], run=broken))
    report = initcheck.analyze(sample)
    assert {f.code for f in report.findings} == expected and expected
    assert "concat check skipped on this model (ValueError: math domain error)" in report.notes
