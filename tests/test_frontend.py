"""ONNX frontend and IR passes: scopes, fusion, folding, control flow, and no torch on this path."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import SAMPLES
from onnx import TensorProto, helper, numpy_helper

import initcheck
from initcheck.frontends import load
from initcheck.frontends.onnx_frontend import scope_of
from initcheck.passes import fuse_pointwise


def test_scope_from_legacy_node_names():
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="/layer1/layer1.0/conv1/Conv")
    assert scope_of(node) == "layer1.0.conv1"
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="/layers.0/attention/q_proj/MatMul")
    assert scope_of(node) == "layers.0.attention.q_proj"
    assert scope_of(helper.make_node("Relu", ["x"], ["y"], name="Relu_3")) == ""
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="/blocks/blocks.0/expand/expand.0/Conv")
    assert scope_of(node) == "blocks.0.expand.0"


def test_scope_from_dynamo_metadata():
    node = helper.make_node("LayerNormalization", ["x"], ["y"], name="node_layer_norm")
    entry = node.metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.name_scopes", "['', 'embeddings', 'embeddings.LayerNorm', 'layer_norm']"
    assert scope_of(node) == "embeddings.LayerNorm"


def _graph(nodes, inits, inputs, opset=17):
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_exported_gelu_decomposition_is_one_exact_node(tmp_path):
    """x * 0.5 * (1 + erf(x / sqrt(2))) after a MatMul fuses into one pointwise node named gelu."""
    w = np.random.default_rng(0).standard_normal((8, 8)) / np.sqrt(8)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Div", ["h", "c"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["f"]),
        helper.make_node("Mul", ["h", "f"], ["g"]),
        helper.make_node("Mul", ["g", "half"], ["y"]),
    ]
    model = _graph(
        nodes,
        {"w": w, "c": np.sqrt(2.0), "one": 1.0, "half": 0.5},
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
    )
    onnx.save(model, str(tmp_path / "gelu.onnx"))
    graph = load(tmp_path / "gelu.onnx")
    fuse_pointwise(graph)
    pointwise = [n for n in graph.nodes if n.op == "pointwise"]
    assert len(pointwise) == 1 and pointwise[0].attrs["function"] == "gelu"
    report = initcheck.analyze(tmp_path / "gelu.onnx")
    assert report.layers[0].op == "linear+gelu"


def test_integer_token_ids_feed_an_embedding():
    report = initcheck.analyze(SAMPLES / "prenorm_transformer.onnx")
    assert report.layers[0].op == "embedding"
    assert report.inputs == {"input_ids": [1, 16]}


def test_control_flow_is_reported_and_passed_around(tmp_path):
    then = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["h"], ["o"])],
        "else",
        [],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
    ]
    model = _graph(
        nodes,
        {"w": np.eye(4)},
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
    )
    onnx.save(model, str(tmp_path / "if.onnx"))
    report = initcheck.analyze(tmp_path / "if.onnx")
    assert report.coverage.unsupported == {"If (subgraph)": 1}
    assert any(f.code == "IC301" for f in report.findings)


def test_weights_behind_constant_cast_identity_chains(tmp_path):
    w = np.random.default_rng(1).standard_normal((8, 8)).astype(np.float16) * np.float16(0.5)
    const = helper.make_node("Constant", [], ["w16"], value=numpy_helper.from_array(w, "w16"))
    nodes = [
        const,
        helper.make_node("Cast", ["w16"], ["w32"], to=TensorProto.FLOAT),
        helper.make_node("Identity", ["w32"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    model = _graph(nodes, {}, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])])
    onnx.save(model, str(tmp_path / "chain.onnx"))
    report = initcheck.analyze(tmp_path / "chain.onnx")
    row = report.layers[0]
    assert row.op == "linear"
    assert row.weight_std == pytest.approx(float(np.sqrt(np.mean(w.astype(np.float64) ** 2))), rel=1e-6)
    assert abs(row.symbolic.K - 8 * float(np.mean(w.astype(np.float64) ** 2))) < 1e-6


def test_shape_computations_carry_no_signal():
    report = initcheck.analyze(SAMPLES / "prenorm_transformer.onnx", all_nodes=True)
    ops = {row.source_op for row in report.layers}
    assert not ops & {"Shape", "ConstantOfShape", "Range", "Equal", "Where", "Expand", "Concat", "Unsqueeze"}
    assert {"Gather", "LayerNormalization", "MatMul"} <= ops


def test_symbolic_path_does_not_import_torch():
    code = (
        "import sys, initcheck; initcheck.analyze('%s'); print('torch' in sys.modules, 'matplotlib' in sys.modules)"
        % (SAMPLES / "unet_block.onnx")
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False False", out.stderr


def test_rows_fold_activations_into_their_layer():
    report = initcheck.analyze(SAMPLES / "relu_mlp_he.onnx")
    assert len(report.layers) == 16 and all(r.op == "linear+relu" for r in report.layers)
    assert all(abs(r.forward_log10) < 0.3 for r in report.layers)  # He init keeps K
    assert all(r.target_std and abs(r.weight_std / r.target_std - 1) < 0.1 for r in report.layers)


def test_pre_ln_stream_growth_is_information_not_error():
    report = initcheck.analyze(SAMPLES / "prenorm_transformer.onnx")
    assert report.worst_severity() in (None, "info")
    assert any(r.normalized_downstream for r in report.layers)


def test_every_translated_op_has_a_rule():
    """Each canonical op an ONNX handler can produce has a forward rule (elementwise ops become `pointwise`)."""
    from initcheck import pointwise
    from initcheck.frontends.onnx_ops import BINARY_OPS, REARRANGE, UNARY_ATTRS, UNARY_OPS
    from initcheck.rules import FORWARD, load_all

    load_all()
    produced = set(REARRANGE.values()) | {
        "linear",
        "matmul",
        "conv",
        "conv_transpose",
        "batch_norm",
        "layer_norm",
        "rms_norm",
        "group_norm",
        "instance_norm",
        "max_pool",
        "avg_pool",
        "global_avg_pool",
        "global_max_pool",
        "resize",
        "dropout",
        "softmax",
        "log_softmax",
        "reduce_mean",
        "reduce_sum",
        "reduce_max",
        "embedding",
        "gather",
        "concat",
        "pad",
        "lrn",
        "prelu",
        "rnn",
        "lstm",
        "gru",
    }
    elementwise = set(UNARY_OPS.values()) | {op for op, _ in UNARY_ATTRS.values()} | {"clip"}
    assert elementwise <= set(pointwise.UNARY)
    assert produced - set(FORWARD) == set()
    assert set(BINARY_OPS.values()) - set(FORWARD) == {"pow", "max", "min"}  # only as fused pointwise chains


def test_registry_rejects_duplicates():
    import pytest

    from initcheck.rules.registry import forward_rule, load_all

    load_all()
    with pytest.raises(ValueError, match="duplicate"):
        forward_rule("relu_unused_name", "linear")(lambda *a: None)


@pytest.mark.parametrize("tokens", [16, 128])
def test_a_large_additive_causal_mask_is_a_mask_not_signal(tmp_path, tokens):
    """The torch.export-based exporter writes SDPA's causal mask as a constant of zeros and float32's minimum.
    At 128 tokens it has more entries than small constants keep; it must still count as a mask (the keys each
    query sees), not as a logit term of std 1.7e38 (a false IC504 error on every decoder at real lengths)."""
    width = 64
    rng = np.random.default_rng(0)
    mask = np.where(np.tril(np.ones((tokens, tokens), bool)), 0.0, np.finfo(np.float32).min).astype(np.float32)
    weights = {
        name: numpy_helper.from_array(rng.normal(0, width**-0.5, (width, width)).astype(np.float32), name)
        for name in ("wq", "wk", "wv")
    }
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "mask"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, tokens, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, tokens, width])],
        [
            *weights.values(),
            numpy_helper.from_array(np.array(width**-0.5, np.float32), "scale"),
            numpy_helper.from_array(mask[None], "mask"),
        ],
    )
    path = tmp_path / "attention.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    report = initcheck.analyze(path, probe=initcheck.ProbeOptions(seeds=2, batch=8))
    assert not [f for f in report.findings if f.code == "IC504"]
    out = next(r for r in report.layers if r.value == "y")
    assert out.symbolic.K == pytest.approx(out.measured.K, rel=0.15)  # diffuse causal attention: ~ K_v H_T / T
