"""Translation of ONNX ops to canonical IR ops: one handler per ONNX op, returning (op, attrs, params).

Handlers only translate: they normalise attributes and turn weights into statistics (initcheck.stats).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from initcheck.frontends import canonical
from initcheck.registry import Table
from initcheck.stats import (
    affine_stats,
    linear_stats,
    recurrent_gate_stats,
    tensor_stats,
)

Translation = tuple[str, dict, dict]


@dataclass
class OpContext:
    """What a handler may look at: constant arrays, shapes, attributes, which values carry signal."""

    arrays: dict[str, np.ndarray]
    shapes: dict[str, tuple]
    signal: set[str]
    opset: int
    training: bool
    absorbed: dict[str, str] = field(default_factory=dict)  # bias Add output -> MatMul it was fused into
    consumers: dict[str, list] = field(default_factory=dict)  # value name -> ONNX nodes reading it
    fake_quant: dict[str, str] = field(default_factory=dict)  # QuantizeLinear output -> its DequantizeLinear's output

    def array(self, name: str) -> np.ndarray | None:
        return self.arrays.get(name) if name else None

    def shape(self, name: str) -> tuple | None:
        entry = self.shapes.get(name)
        return entry[0] if entry else None

    def scalar(self, name: str, default=None):
        a = self.array(name)
        return default if a is None or a.size != 1 else a.reshape(()).item()


HANDLERS = Table("ONNX handler")
handles = HANDLERS.register


def attributes(node) -> dict:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, list):
            v = [x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


UNARY_OPS = {
    "Relu": "relu",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "HardSwish": "hard_swish",
    "Softplus": "softplus",
    "Softsign": "softsign",
    "Mish": "mish",
    "Sin": "sin",
    "Cos": "cos",
    "Erf": "erf",
    "Exp": "exp",
    "Log": "log",
    "Sqrt": "sqrt",
    "Reciprocal": "reciprocal",
    "Abs": "abs",
    "Neg": "neg",
    "Swish": "silu",
    "Sign": "sign",
}
UNARY_ATTRS: dict[str, tuple[str, dict[str, Any]]] = {
    "LeakyRelu": ("leaky_relu", {"alpha": 0.01}),
    "Elu": ("elu", {"alpha": 1.0}),
    "Celu": ("celu", {"alpha": 1.0}),
    "Selu": ("selu", {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875}),
    "HardSigmoid": ("hard_sigmoid", {"alpha": 0.2, "beta": 0.5}),
    "ThresholdedRelu": ("thresholded_relu", {"alpha": 1.0}),
    "Gelu": ("gelu", {"approximate": "none"}),
    "Shrink": ("shrink", {"bias": 0.0, "lambd": 0.5}),
}
BINARY_OPS = {
    "Add": "add",
    "Sub": "sub",
    "Mul": "mul",
    "Div": "div",
    "Pow": "pow",
    "Max": "max",
    "Min": "min",
    "Sum": "sum",
}
REARRANGE = {
    "Reshape": "reshape",
    "Flatten": "flatten",
    "Transpose": "transpose",
    "Squeeze": "squeeze",
    "Unsqueeze": "unsqueeze",
    "Identity": "identity",
    "Cast": "cast",
    "CastLike": "cast",
    "Expand": "expand",
    "Tile": "tile",
    "Split": "split",
    "GatherElements": "gather",
    "GatherND": "gather",
    "DepthToSpace": "depth_to_space",
    "SpaceToDepth": "space_to_depth",
    "Where": "where",
}


@handles(*UNARY_OPS)
def _unary(node, ctx):
    return UNARY_OPS[node.op_type], {}, {}


@handles(*UNARY_ATTRS)
def _unary_attrs(node, ctx):
    op, defaults = UNARY_ATTRS[node.op_type]
    given = attributes(node)
    return op, {k: given.get(k, v) for k, v in defaults.items()}, {}


@handles("Clip")
def _clip(node, ctx):
    a = attributes(node)
    lo = a.get("min", ctx.scalar(node.input[1] if len(node.input) > 1 else "", -np.inf))
    hi = a.get("max", ctx.scalar(node.input[2] if len(node.input) > 2 else "", np.inf))
    return "clip", {"min": float(lo), "max": float(hi)}, {}


@handles("PRelu")
def _prelu(node, ctx):
    slope = ctx.array(node.input[1])
    if slope is None:
        return None
    if slope.size == 1:
        return "leaky_relu", {"alpha": float(slope.reshape(()))}, {}
    return "prelu", {}, {"slope": tensor_stats(slope)}


@handles(*BINARY_OPS)
def _binary(node, ctx):
    params = {}
    if node.op_type == "Div" and len(node.input) > 1:
        divisor = ctx.array(node.input[1])
        if divisor is not None:
            with np.errstate(divide="ignore"):
                params["reciprocal"] = tensor_stats(1.0 / divisor.astype(np.float64))
    return BINARY_OPS[node.op_type], {}, params


@handles(*REARRANGE)
def _rearrange(node, ctx):
    return REARRANGE[node.op_type], attributes(node), {}


_QUANT_RANGES = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767)}


def fake_quant_range(node, ctx) -> tuple[float, float] | None:
    """QuantizeLinear read only by one DequantizeLinear (QDQ / quantisation-aware graphs) with constant scale:
    the pair is x clipped to the representable range, plus rounding noise of step^2/12 that is negligible
    against unit-scale signals. None for anything else (integer graphs stay unmodeled)."""
    readers = ctx.consumers.get(node.output[0], [])
    if len(readers) != 1 or readers[0].op_type != "DequantizeLinear" or readers[0].input[0] != node.output[0]:
        return None
    scale = ctx.array(node.input[1]) if len(node.input) > 1 else None
    zero = ctx.array(node.input[2]) if len(node.input) > 2 else None
    kind = str(zero.dtype) if zero is not None else "uint8"
    if scale is None or scale.size == 0 or kind not in _QUANT_RANGES:
        return None
    step, offset = float(np.mean(np.abs(scale))), float(np.mean(zero)) if zero is not None and zero.size else 0.0
    lo, hi = _QUANT_RANGES[kind]
    return (lo - offset) * step, (hi - offset) * step


@handles("QuantizeLinear")
def _fake_quantize(node, ctx):
    bounds = fake_quant_range(node, ctx) if node.output[0] in ctx.fake_quant else None
    return ("clip", {"min": bounds[0], "max": bounds[1]}, {}) if bounds else None


def _linear_from(weight_out_in: np.ndarray, bias: np.ndarray | None) -> dict:
    return {"weight": linear_stats(weight_out_in, bias)}


@handles("MatMul")
def _matmul(node, ctx):
    a, b = ctx.array(node.input[0]), ctx.array(node.input[1])
    if b is not None and b.ndim == 2 and node.input[0] in ctx.signal:
        bias = ctx.arrays.get(ctx.absorbed.get(node.output[0], ""))
        return "linear", {}, _linear_from(b.T, bias)
    if a is not None and a.ndim == 2 and node.input[1] in ctx.signal:
        return "linear", {"left": True}, _linear_from(a, None)
    return "matmul", {}, {}


@handles("Gemm")
def _gemm(node, ctx):
    at = attributes(node)
    b = ctx.array(node.input[1])
    if b is None or node.input[0] not in ctx.signal:
        return "matmul", {}, {}
    w = (b if at.get("transB", 0) else b.T) * at.get("alpha", 1.0)
    c = ctx.array(node.input[2]) if len(node.input) > 2 else None
    bias = (
        None
        if c is None
        else np.broadcast_to(c * at.get("beta", 1.0), (w.shape[0],))
        if c.size in (1, w.shape[0])
        else None
    )
    return "linear", {}, _linear_from(w, bias)


def _window_attrs(node, ctx, kernel: list[int]) -> dict:
    a = attributes(node)
    n = len(kernel)
    strides = list(a.get("strides", [1] * n))
    dilations = list(a.get("dilations", [1] * n))
    pads = list(a.get("pads", [0] * 2 * n))
    auto = a.get("auto_pad", "NOTSET")
    shape = ctx.shape(node.input[0])
    if auto in ("SAME_UPPER", "SAME_LOWER") and shape and all(d is not None for d in shape[2:]):
        pads = [0] * 2 * n
        for i, (length, k, s, d) in enumerate(zip(shape[2:], kernel, strides, dilations)):
            total = max((-(-length // s) - 1) * s + (k - 1) * d + 1 - length, 0)
            pads[i] = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads[i + n] = total - pads[i]
    elif auto == "VALID":
        pads = [0] * 2 * n
    return canonical.window(kernel, strides, dilations, pads[:n], pads[n:], int(a.get("group", 1)))


@handles("Conv")
def _conv(node, ctx):
    w = ctx.array(node.input[1])
    if w is None:
        return None
    bias = ctx.array(node.input[2]) if len(node.input) > 2 else None
    shuffle = _depth_to_space_after(node, ctx)
    block = int(shuffle.get("blocksize", 1)) if shuffle is not None else None
    crd = shuffle is not None and shuffle.get("mode", "DCR") == "CRD"
    return canonical.conv(w, bias, _window_attrs(node, ctx, list(w.shape[2:])), False, block, channel_first=crd)


def _depth_to_space_after(node, ctx) -> dict | None:
    """The attributes of the DepthToSpace a conv feeds (directly or through one elementwise op), if any."""
    readers = ctx.consumers.get(node.output[0], [])
    if len(readers) == 1 and readers[0].op_type != "DepthToSpace" and len(readers[0].output) == 1:
        readers = ctx.consumers.get(readers[0].output[0], [])
    shuffle = next((r for r in readers if r.op_type == "DepthToSpace"), None)
    return attributes(shuffle) if shuffle is not None else None


@handles("ConvTranspose")
def _conv_transpose(node, ctx):
    w = ctx.array(node.input[1])
    if w is None:
        return None
    bias = ctx.array(node.input[2]) if len(node.input) > 2 else None
    return canonical.conv(w, bias, _window_attrs(node, ctx, list(w.shape[2:])), transposed=True)


def _norm_params(ctx, scale_name: str, bias_name: str) -> dict:
    return affine_stats(ctx.array(scale_name), ctx.array(bias_name))


@handles("BatchNormalization")
def _batch_norm(node, ctx):
    a = attributes(node)
    training = (
        ctx.training
        or bool(a.get("training_mode", 0))
        or (ctx.opset < 9 and len(node.output) > 1 and not a.get("is_test", 0))
    )
    gamma, beta, mu, var = (ctx.array(n) for n in node.input[1:5])
    if any(x is None for x in (gamma, beta, mu, var)):  # computed at run time: not an init to check
        return None
    return canonical.batch_norm(gamma, beta, mu, var, float(a.get("epsilon", 1e-5)), training)


@handles("LRN")
def _lrn(node, ctx):
    a = attributes(node)
    return (
        "lrn",
        {
            "alpha": float(a.get("alpha", 1e-4)),
            "beta": float(a.get("beta", 0.75)),
            "bias": float(a.get("bias", 1.0)),
            "size": int(a["size"]),
        },
        {},
    )


@handles("LayerNormalization")
def _layer_norm(node, ctx):
    a = attributes(node)
    return (
        "layer_norm",
        {"axis": int(a.get("axis", -1)), "epsilon": float(a.get("epsilon", 1e-5))},
        _norm_params(ctx, node.input[1], node.input[2] if len(node.input) > 2 else ""),
    )


@handles("RMSNormalization", "SimplifiedLayerNormalization")
def _rms_norm(node, ctx):
    a = attributes(node)
    return (
        "rms_norm",
        {"axis": int(a.get("axis", -1)), "epsilon": float(a.get("epsilon", 1e-5))},
        _norm_params(ctx, node.input[1], ""),
    )


@handles("GroupNormalization")
def _group_norm(node, ctx):
    a = attributes(node)
    return (
        "group_norm",
        {"num_groups": int(a["num_groups"]), "epsilon": float(a.get("epsilon", 1e-5))},
        _norm_params(ctx, node.input[1], node.input[2]),
    )


@handles("InstanceNormalization")
def _instance_norm(node, ctx):
    a = attributes(node)
    return "instance_norm", {"epsilon": float(a.get("epsilon", 1e-5))}, _norm_params(ctx, node.input[1], node.input[2])


@handles("MaxPool", "AveragePool", "LpPool")
def _pool(node, ctx):
    a = attributes(node)
    attrs = _window_attrs(node, ctx, list(a["kernel_shape"]))
    attrs["count_include_pad"] = int(a.get("count_include_pad", 0))
    return {"MaxPool": "max_pool", "AveragePool": "avg_pool"}.get(node.op_type, "lp_pool"), attrs, {}


@handles("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(node, ctx):
    return {"GlobalAveragePool": "global_avg_pool", "GlobalMaxPool": "global_max_pool"}[node.op_type], {}, {}


@handles("Resize", "Upsample")
def _resize(node, ctx):
    a = attributes(node)
    scales = a.get("scales")
    if scales is None:
        for name in node.input[1:]:
            arr = ctx.array(name)
            if arr is not None and arr.dtype.kind == "f" and arr.size > 0:
                scales = arr.tolist()
    in_shape, out_shape = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    if (not scales) and in_shape and out_shape and all(in_shape) and all(out_shape):
        scales = [o / i for o, i in zip(out_shape, in_shape)]
    spatial = [float(s) for s in (scales or [])[2:]]
    mode = a.get("mode", "nearest")
    return (
        "resize",
        {"mode": "nearest" if mode == "nearest" else "linear" if "linear" in mode else mode, "scales": spatial},
        {},
    )


@handles("Dropout")
def _dropout(node, ctx):
    a = attributes(node)
    ratio = float(a.get("ratio", ctx.scalar(node.input[1] if len(node.input) > 1 else "", 0.5)))
    training_input = ctx.scalar(node.input[2] if len(node.input) > 2 else "", None)
    training = ctx.training or (
        bool(training_input) if training_input is not None else (ctx.opset < 7 and not a.get("is_test", 0))
    )
    return "dropout", {"ratio": ratio, "training": training}, {}


def _axis_size(ctx, name: str, axis: int, flatten: bool) -> int | None:
    shape = ctx.shape(name)
    if shape is None:
        return None
    dims = shape[axis:] if flatten else (shape[axis],)
    return None if any(d is None for d in dims) else int(np.prod(dims))


@handles("Softmax", "LogSoftmax")
def _softmax(node, ctx):
    a = attributes(node)
    legacy = ctx.opset < 13
    axis = int(a.get("axis", 1 if legacy else -1))
    op = "softmax" if node.op_type == "Softmax" else "log_softmax"
    return op, {"axis": axis, "size": _axis_size(ctx, node.input[0], axis, legacy)}, {}


def _reduce_axes(node, ctx) -> list[int] | None:
    a = attributes(node)
    if "axes" in a:
        return list(a["axes"])
    axes = ctx.array(node.input[1]) if len(node.input) > 1 else None
    return axes.astype(int).tolist() if axes is not None else None


@handles("ReduceMean", "ReduceSum", "ReduceMax", "ReduceL2", "ReduceSumSquare")
def _reduce(node, ctx):
    op = {"ReduceMean": "reduce_mean", "ReduceSum": "reduce_sum", "ReduceMax": "reduce_max"}.get(node.op_type)
    if op is None:
        return None
    return op, {"axes": _reduce_axes(node, ctx), "keepdims": int(attributes(node).get("keepdims", 1))}, {}


@handles("Gather")
def _gather(node, ctx):
    table = ctx.array(node.input[0])
    if table is not None and node.input[0] not in ctx.signal and table.dtype.kind == "f" and table.ndim == 2:
        return canonical.embedding(table)
    attrs = dict(attributes(node))
    index = ctx.array(node.input[1]) if len(node.input) > 1 else None
    if index is not None and index.ndim == 0:  # a select: which entry the per-axis profile keeps
        attrs["index"] = int(index)
        attrs.setdefault("axis", 0)  # ONNX's default
    return "gather", attrs, {}


@handles("Slice")
def _slice(node, ctx):
    """One axis's range, where the inputs give it as constants (the per-axis profile follows it)."""
    given = attributes(node)  # opset < 10 gives them as attributes
    inputs = [ctx.array(name) if name else None for name in list(node.input[1:5])] + [None] * 4
    starts, ends, axes, steps = (
        np.asarray(given[k]) if k in given else inputs[i] for i, k in enumerate(("starts", "ends", "axes", "steps"))
    )
    if starts is None or ends is None or starts.size != 1:
        return "slice", {}, {}
    return (
        "slice",
        {
            "axis": int(axes.reshape(-1)[0]) if axes is not None else 0,
            "start": int(starts.reshape(-1)[0]),
            "end": int(ends.reshape(-1)[0]),
            "step": int(steps.reshape(-1)[0]) if steps is not None else 1,
        },
        {},
    )


@handles("Concat")
def _concat(node, ctx):
    return "concat", {"axis": int(attributes(node)["axis"])}, {}


@handles("Pad")
def _pad(node, ctx):
    a = attributes(node)
    value = a.get("value", ctx.scalar(node.input[2] if len(node.input) > 2 else "", 0.0))
    return "pad", {"mode": a.get("mode", "constant"), "value": float(value or 0.0)}, {}


_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
_DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}


@handles("RNN", "GRU", "LSTM")
def _recurrent(node, ctx):
    """One gate list per direction (W, R, B hold the directions along their first axis). The rules know the
    default activations (and ReLU for RNN); other activations, clipping and peepholes are not modeled."""
    a = attributes(node)
    w, r = ctx.array(node.input[1]), ctx.array(node.input[2])
    activations = [str(x.decode() if isinstance(x, bytes) else x) for x in a.get("activations", [])]
    peepholes = len(node.input) > 7 and node.input[7]
    default = _DEFAULT_ACTIVATIONS[node.op_type]
    relu_rnn = node.op_type == "RNN" and activations[:1] == ["Relu"]
    if (
        w is None
        or r is None
        or peepholes
        or "clip" in a
        or (activations[: len(default)] not in ([], default) and not relu_rnn)
    ):
        return None
    b = ctx.array(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    n_gates, hidden = _GATES[node.op_type], int(a["hidden_size"])
    directions = []
    for d in range(w.shape[0]):
        w_d, r_d = w[d].astype(np.float64), r[d].astype(np.float64)
        bias = (b[d][: n_gates * hidden] + b[d][n_gates * hidden :]) if b is not None else np.zeros(n_gates * hidden)
        directions.append(
            [recurrent_gate_stats(w_d, r_d, bias, slice(g * hidden, (g + 1) * hidden)) for g in range(n_gates)]
        )
    kind = node.op_type.lower()
    attrs = {
        "kind": kind,
        "hidden_size": hidden,
        "activation": "relu" if relu_rnn else "tanh",
        "layout": a.get("layout", 0),
    }
    return kind, attrs, {"directions": directions}
