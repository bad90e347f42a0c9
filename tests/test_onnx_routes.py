"""The same model gives the same numbers from an ONNX file as from the live module: the forms the torch exporters
write (a NaN guard behind attention's softmax, GroupNorm as InstanceNormalization between reshapes, chunk bounds
computed from Shape, constants the frontend folds) are read as what they compute. Found by issue 15's survey of the
zoo through every route (tests/test_zoo.py::test_every_route_predicts_the_live_modules_numbers)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.nn import functional as F
from zoo import differing_rows

import initcheck

EXPORTERS = [
    pytest.param(False, id="legacy"),
    pytest.param(True, id="dynamo", marks=pytest.mark.zoo),
]


def _export(model: nn.Module, x: torch.Tensor, path, dynamo: bool):
    logging.disable(logging.WARNING)
    try:
        torch.onnx.export(
            model.eval(), (x,), str(path), dynamo=dynamo, input_names=["x"], opset_version=None if dynamo else 17
        )
    finally:
        logging.disable(logging.NOTSET)
    return path


def _differences(ours, theirs, rel: float = 1e-3) -> list[str]:
    rows, paired, differ = differing_rows(ours, theirs, rel)
    assert paired >= min(rows, 3), f"{paired} of {rows} rows paired"
    return differ


def _op_types(path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path)).graph.node}


class CausalAttention(nn.Module):
    """One attention layer whose values share a part over the tokens (their bias), which the softmax's backward
    cancels: what the rule reads from the values the weights multiply."""

    def __init__(self, d: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.q, self.k = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        self.v, self.out = nn.Linear(d, d), nn.Linear(d, d)
        with torch.no_grad():
            self.v.bias.fill_(1.0)

    def forward(self, x):
        b, t, d = x.shape

        def split(y):
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        causal = torch.ones(t, t, dtype=torch.bool).tril()  # a mask, as transformers passes one
        o = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), attn_mask=causal)
        return self.out(o.transpose(1, 2).reshape(b, t, d))


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_attention_behind_a_nan_guard_has_the_live_modules_gradients(dynamo, tmp_path):
    """Both exporters write softmax as Where(IsNaN(p), 0, p): read as p, the query and key projections' G match the
    live module's (the guard hid the values, and their shared part, from the softmax's rule: 2-4x)."""
    torch.manual_seed(0)
    model, x = CausalAttention(), torch.randn(1, 16, 32)
    path = _export(model, x, tmp_path / "attention.onnx", dynamo)
    assert {"IsNaN", "Where"} <= _op_types(path)  # the form this test is about
    live, exported = initcheck.analyze(model, x), initcheck.analyze(str(path), {"x": tuple(x.shape)})
    assert not _differences(live, exported)


class NormThenPool(nn.Module):
    """GroupNorm removes each group's mean, not each channel's: the channels' offsets it keeps are what a
    global average pool (or an attention over the map) reads."""

    def __init__(self):
        super().__init__()
        self.conv, self.norm, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.Linear(16, 8)
        with torch.no_grad():
            self.conv.bias.normal_(0.0, 1.0)

    def forward(self, x):
        return self.head(F.silu(self.norm(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_exported_group_norm_is_read_as_one(dynamo, tmp_path):
    torch.manual_seed(0)
    model, x = NormThenPool(), torch.randn(2, 3, 8, 8)
    path = _export(model, x, tmp_path / "group_norm.onnx", dynamo)
    assert "InstanceNormalization" in _op_types(path)
    exported = initcheck.analyze(str(path), {"x": tuple(x.shape)})
    assert "group_norm" in {r.op.split("+")[0] for r in exported.layers}
    assert not _differences(initcheck.analyze(model, x), exported)


def _graph_file(path, nodes, initializers, inputs, output: str, output_shape):
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, output_shape)],
        [numpy_helper.from_array(np.asarray(a), name) for name, a in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (path).write_bytes(model.SerializeToString())
    return str(path)


def _chunked(path, bounds_from_shape: bool) -> str:
    """y = x W + z; a, b = y[..., :8], y[..., 8:]; out = a * b, the bounds either constants or computed from
    Shape(y)[-1] as the legacy exporter writes torch.chunk. z is zeros expanded to a shape chosen by a Where, as
    transformers builds its masks: shape inference leaves its first dim, and so y's, open (Phi-3's batch)."""
    rng = np.random.default_rng(0)
    inits = {"W": (rng.normal(0, 0.25, (16, 16))).astype(np.float32), "zero": np.array([0], np.int64)}
    inits.update({"last": np.array([-1], np.int64), "two": np.array([2], np.int64), "end": np.array([16], np.int64)})
    inits.update({"zeros": np.zeros((1, 16), np.float32), "yes": np.array([True, True]), "size": np.array([1, 16])})
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Where", ["yes", "size", "size"], ["target"]),
        helper.make_node("Expand", ["zeros", "target"], ["z"]),
        helper.make_node("Add", ["xw", "z"], ["y"]),
    ]
    if bounds_from_shape:
        nodes += [
            helper.make_node("Shape", ["y"], ["shape"]),
            helper.make_node("Gather", ["shape", "last"], ["width"], axis=0),
            helper.make_node("Div", ["width", "two"], ["half"]),
        ]
    else:
        inits["half"] = np.array([8], np.int64)
    nodes += [
        helper.make_node("Slice", ["y", "zero", "half", "last"], ["a"]),
        helper.make_node("Slice", ["y", "half", "end", "last"], ["b"]),
        helper.make_node("Mul", ["a", "b"], ["out"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    return _graph_file(path, nodes, inits, [x], "out", [1, 8])


def test_chunk_bounds_computed_from_an_open_batch_are_folded(tmp_path):
    """Shape(y)[-1] folds where y's first dim is open: the two halves' gradients are each half of y's (each was
    taken as covering all of y: G 2x)."""
    computed = initcheck.analyze(_chunked(tmp_path / "computed.onnx", True))
    constant = initcheck.analyze(_chunked(tmp_path / "constant.onnx", False))
    assert not _differences(constant, computed, rel=1e-9)
    y = next(r for r in computed.layers if r.op.startswith("linear"))
    assert y.shape is not None and y.shape[-1] == 16


def _position_table(path, folded: bool) -> str:
    """x + table[0..31] -> LayerNorm -> MatMul: the gathered rows (32 x 256, beyond the size whose values the
    shape inference is given) either folded by the frontend from Gather(table, Range) or stored as they are."""
    rng = np.random.default_rng(1)
    table = rng.normal(0.3, 0.1, (32, 256)).astype(np.float32)  # a mean every position shares
    inits = {"gamma": np.ones(256, np.float32), "beta": np.zeros(256, np.float32)}
    inits["W"] = rng.normal(0, 1 / 16, (256, 8)).astype(np.float32)
    nodes = []
    if folded:
        inits.update({"table": table, "start": np.array(0, np.int64), "stop": np.array(32, np.int64)})
        inits["step"] = np.array(1, np.int64)
        nodes += [
            helper.make_node("Range", ["start", "stop", "step"], ["ids"]),
            helper.make_node("Gather", ["table", "ids"], ["rows"], axis=0),
        ]
    else:
        inits["rows"] = table
    nodes += [
        helper.make_node("Add", ["x", "rows"], ["h"]),
        helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["n"], axis=-1, epsilon=1e-5),
        helper.make_node("MatMul", ["n", "W"], ["out"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32, 256])
    return _graph_file(path, nodes, inits, [x], "out", [2, 32, 8])


def test_a_large_folded_constant_leaves_the_shapes_after_it(tmp_path):
    """A constant folded by the frontend beyond the size whose values shape inference gets keeps its shape there:
    without it every value after it lost its shape, and a layer norm of unknown size removed the offsets every
    position shares (GPT-2 512 wide through the legacy exporter: its attention outputs 5x low)."""
    folded = initcheck.analyze(_position_table(tmp_path / "folded.onnx", True))
    stored = initcheck.analyze(_position_table(tmp_path / "stored.onnx", False))
    norm = next(r for r in folded.layers if r.op == "layer_norm")
    assert norm.shape == [2, 32, 256]
    assert not _differences(stored, folded, rel=1e-9)


def _step_sizes(path, thresholded: bool) -> str:
    """dt = softplus(x W + b) as torch's softplus (threshold 20) is written by the dynamo exporter, Where(a > 20,
    a, Softplus(a)), or as a Softplus alone; then exp(-dt), Mamba's decay."""
    rng = np.random.default_rng(2)
    inits = {"W": rng.normal(0, 0.5, (16, 16)).astype(np.float32), "b": np.full(16, -4.0, np.float32)}
    inits.update({"threshold": np.array(20.0, np.float32), "minus": np.array(-1.0, np.float32)})
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["a"]),
        helper.make_node("Softplus", ["a"], ["soft" if thresholded else "dt"]),
    ]
    if thresholded:
        nodes += [
            helper.make_node("Greater", ["a", "threshold"], ["large"]),
            helper.make_node("Where", ["large", "a", "soft"], ["dt"]),
        ]
    nodes += [helper.make_node("Mul", ["dt", "minus"], ["negative"]), helper.make_node("Exp", ["negative"], ["out"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])
    return _graph_file(path, nodes, inits, [x], "out", [4, 16])


def test_a_thresholded_softplus_is_read_as_the_softplus(tmp_path):
    """Where(a > 20, a, Softplus(a)) is softplus to within e^-20: read as a choice between two signals it passed
    `a` itself (Mamba's step sizes K 21.7 for 0.003; their exp overflowed to inf)."""
    thresholded = initcheck.analyze(_step_sizes(tmp_path / "thresholded.onnx", True))
    plain = initcheck.analyze(_step_sizes(tmp_path / "plain.onnx", False))
    rows = {r.op: r.symbolic.K for r in thresholded.layers}
    assert all(np.isfinite(k) for k in rows.values()), rows
    assert thresholded.layers[-1].symbolic.K == pytest.approx(plain.layers[-1].symbolic.K, rel=1e-9)


def test_a_choice_between_two_signals_is_said_to_be_approximate(tmp_path):
    """Where(a > 0.5, a, Softplus(a)) is no guard (the two differ where a is near 0.5): the where passes one
    signal for a mask it does not know, and says that its numbers are approximate (they were marked exact)."""
    rng = np.random.default_rng(3)
    inits = {"W": rng.normal(0, 0.25, (16, 16)).astype(np.float32), "cut": np.array(0.5, np.float32)}
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["a"]),
        helper.make_node("Softplus", ["a"], ["soft"]),
        helper.make_node("Greater", ["a", "cut"], ["large"]),
        helper.make_node("Where", ["large", "a", "soft"], ["out"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])
    report = initcheck.analyze(_graph_file(tmp_path / "choice.onnx", nodes, inits, [x], "out", [4, 16]))
    assert report.layers[0].symbolic.exact  # the matmul
    assert not report.layers[-1].symbolic.exact
    assert report.layers[-1].status == "approximated"
