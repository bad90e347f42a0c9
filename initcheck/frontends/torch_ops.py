"""Translation of torch.export ATen ops to canonical IR ops: one handler per op family.

A handler gets the fx node and a context (constants as numpy arrays, which values carry signal) and
returns a list of (op, inputs, outputs, attrs, params) for the IR: usually one node, several where an op
is lowered onto existing rules (scaled_dot_product_attention -> matmul, softmax, matmul).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from initcheck.registry import Table
from initcheck.stats import linear_stats, recurrent_gate_stats, tensor_stats

UNARY = {
    "relu": "relu",
    "relu_": "relu",
    "sigmoid": "sigmoid",
    "sigmoid_": "sigmoid",
    "tanh": "tanh",
    "tanh_": "tanh",
    "silu": "silu",
    "silu_": "silu",
    "mish": "mish",
    "hardswish": "hard_swish",
    "hardswish_": "hard_swish",
    "softplus": "softplus",
    "sin": "sin",
    "cos": "cos",
    "exp": "exp",
    "log": "log",
    "sqrt": "sqrt",
    "reciprocal": "reciprocal",
    "rsqrt": "rsqrt",
    "abs": "abs",
    "neg": "neg",
    "erf": "erf",
    "sign": "sign",
}
REARRANGE = {
    "view": "reshape",
    "reshape": "reshape",
    "_unsafe_view": "reshape",
    "flatten": "flatten",
    "unflatten": "reshape",
    "permute": "transpose",
    "transpose": "transpose",
    "t": "transpose",
    "numpy_T": "transpose",
    "mT": "transpose",
    "squeeze": "squeeze",
    "unsqueeze": "unsqueeze",
    "expand": "expand",
    "contiguous": "identity",
    "clone": "identity",
    "to": "cast",
    "_to_copy": "cast",
    "type_as": "cast",
    "detach": "identity",
    "detach_": "identity",
    "alias": "identity",
    "lift_fresh_copy": "identity",
    "select": "gather",
    "slice": "slice",
    "narrow": "slice",
    "index_select": "gather",
    "index": "gather",
    "repeat": "tile",
    "pixel_unshuffle": "space_to_depth",
    "dropout_": "identity",
    "feature_dropout": "identity",
}
BINARY = {
    "add": "add",
    "add_": "add",
    "sub": "sub",
    "sub_": "sub",
    "rsub": "rsub",
    "mul": "mul",
    "mul_": "mul",
    "div": "div",
    "div_": "div",
    "pow": "pow",
    "maximum": "max",
    "minimum": "min",
}


@dataclass
class TorchContext:
    constants: dict[str, np.ndarray]  # fx node name -> array (weights, folded masks and positions)
    signal: set[str]
    training: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def array(self, arg) -> np.ndarray | None:
        name = getattr(arg, "name", None)
        return self.constants.get(name) if name else None


@dataclass
class Emit:
    op: str
    inputs: list  # fx nodes, constants (numbers / arrays) or None
    attrs: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    outputs: list[str] | None = None  # default: the fx node's own value


HANDLERS = Table("ATen handler")
handles = HANDLERS.register


def op_name(target) -> str:
    """'aten.conv2d.default' -> 'conv2d'."""
    text = str(target)
    if text.startswith("aten."):
        return text.split(".")[1]
    return getattr(target, "__name__", text)


def _arg(node, index: int, name: str, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


@handles(*UNARY)
def _unary(node, ctx):
    return [Emit(UNARY[op_name(node.target)], [node.args[0]])]


@handles("gelu", "gelu_")
def _gelu(node, ctx):
    return [
        Emit(
            "gelu",
            [node.args[0]],
            {"approximate": node.kwargs.get("approximate", _arg(node, 1, "approximate", "none"))},
        )
    ]


@handles("leaky_relu", "leaky_relu_")
def _leaky(node, ctx):
    return [Emit("leaky_relu", [node.args[0]], {"alpha": float(_arg(node, 1, "negative_slope", 0.01))})]


@handles("elu", "elu_", "celu", "celu_", "selu", "selu_")
def _elu(node, ctx):
    name = op_name(node.target).rstrip("_")
    attrs = {} if name == "selu" else {"alpha": float(_arg(node, 1, "alpha", 1.0))}
    return [Emit(name, [node.args[0]], attrs)]


@handles("hardsigmoid", "hardsigmoid_")
def _hardsigmoid(node, ctx):
    return [Emit("hard_sigmoid", [node.args[0]], {"alpha": 1 / 6, "beta": 0.5})]


@handles("clamp", "clamp_", "clip", "hardtanh", "hardtanh_", "relu6", "relu6_", "clamp_min", "clamp_max")
def _clamp(node, ctx):
    name = op_name(node.target).rstrip("_")
    lo, hi = {"hardtanh": (-1.0, 1.0), "relu6": (0.0, 6.0)}.get(name, (None, None))
    if name in ("clamp", "clip", "hardtanh"):
        lo, hi = _arg(node, 1, "min", lo), _arg(node, 2, "max", hi)
    elif name == "clamp_min":
        lo = _arg(node, 1, "min")
    elif name == "clamp_max":
        hi = _arg(node, 1, "max")
    return [
        Emit(
            "clip",
            [node.args[0]],
            {"min": -math.inf if lo is None else float(lo), "max": math.inf if hi is None else float(hi)},
        )
    ]


@handles("prelu", "_prelu_kernel")
def _prelu(node, ctx):
    slope = ctx.array(node.args[1])
    if slope is None:
        return None
    if slope.size == 1:
        return [Emit("leaky_relu", [node.args[0]], {"alpha": float(slope.reshape(()))})]
    return [Emit("prelu", [node.args[0]], params={"slope": tensor_stats(slope)})]


@handles(*BINARY)
def _binary(node, ctx):
    name = op_name(node.target)
    a, b = node.args[0], node.args[1]
    alpha = node.kwargs.get("alpha", 1)
    if name == "rsub":
        a, b, name = b, a, "sub"
    op = BINARY[name] if name != "rsub" else "sub"
    params = {}
    if op == "div" and ctx.array(b) is not None:
        with np.errstate(divide="ignore"):
            params["reciprocal"] = tensor_stats(1.0 / ctx.array(b).astype(np.float64))
    elif op == "div" and isinstance(b, (int, float)):
        params["reciprocal"] = tensor_stats(np.array(1.0 / b))
    if alpha != 1 and op in ("add", "sub"):
        return [
            Emit("mul", [b, float(alpha)], outputs=[f"{node.name}__alpha"]),
            Emit(op, [a, f"{node.name}__alpha"], params=params),
        ]
    return [Emit(op, [a, b], params=params)]


@handles(*REARRANGE)
def _rearrange(node, ctx):
    return [Emit(REARRANGE[op_name(node.target)], [node.args[0]], _placement(node))]


def _rank(arg) -> int | None:
    val = arg.meta.get("val") if hasattr(arg, "meta") else None
    return len(val.shape) if val is not None and hasattr(val, "shape") else None


def _placement(node) -> dict:
    """Where a transpose, select or slice moves or picks entries (perm; axis and index or range), which the
    per-axis energy profile follows (initcheck.rules.axis_profile); empty where the arguments are not plain."""
    op, args, rank = op_name(node.target), node.args, _rank(node.args[0])
    try:
        if op == "permute" and rank:
            return {"perm": [int(d) % rank for d in args[1]]}
        if op == "numpy_T" and rank:
            return {"perm": list(reversed(range(rank)))}
        if op in ("transpose", "t", "mT") and rank:  # a swap of two axes (the last two for t and mT)
            a, b = (int(args[1]) % rank, int(args[2]) % rank) if op == "transpose" else (rank - 2, rank - 1)
            perm = list(range(rank))
            perm[a], perm[b] = perm[b], perm[a]
            return {"perm": perm}
        if op == "select" and rank:
            return {"axis": int(args[1]) % rank, "index": int(args[2])}
        if op in ("slice", "narrow") and rank:
            axis = int(_arg(node, 1, "dim", 0)) % rank
            if op == "narrow":
                start = int(args[2])
                return {"axis": axis, "start": start, "end": start + int(args[3]), "step": 1}
            start, end = _arg(node, 2, "start", None), _arg(node, 3, "end", None)
            return {
                "axis": axis,
                "start": 0 if start is None else int(start),
                "end": None if end is None else int(end),
                "step": int(_arg(node, 4, "step", 1)),
            }
    except (TypeError, ValueError):  # symbolic sizes: no placement, the profile is dropped
        return {}
    return {}


@handles("pixel_shuffle")
def _pixel_shuffle(node, ctx):
    return [Emit("depth_to_space", [node.args[0]], {"blocksize": int(node.args[1])})]


@handles("dropout", "native_dropout", "alpha_dropout")
def _dropout(node, ctx):
    p = float(_arg(node, 1, "p", 0.5))
    train = bool(_arg(node, 2, "train", False)) or ctx.training
    return [Emit("dropout", [node.args[0]], {"ratio": p, "training": train})]


def _weight_out_in(ctx, arg, transpose: bool = False) -> np.ndarray | None:
    w = ctx.array(arg)
    if w is None or w.ndim != 2:
        return None
    return w.T if transpose else w


@handles("linear")
def _linear(node, ctx):
    w = _weight_out_in(ctx, node.args[1])
    if w is None:
        return [Emit("matmul", [node.args[0], node.args[1]])]
    bias = ctx.array(_arg(node, 2, "bias"))
    return [
        Emit("linear", [node.args[0]], {"weight_source": node.args[1].name}, params={"weight": linear_stats(w, bias)})
    ]


@handles("addmm")
def _addmm(node, ctx):
    """addmm(bias, x, W): GPT-2's Conv1D keeps W as (in, out)."""
    w = _weight_out_in(ctx, node.args[2], transpose=True)
    if w is None or node.args[1].name not in ctx.signal:
        return [Emit("matmul", [node.args[1], node.args[2]])]
    return [Emit("linear", [node.args[1]], params={"weight": linear_stats(w, ctx.array(node.args[0]))})]


@handles("mm", "bmm", "matmul")
def _matmul(node, ctx):
    a, b = node.args[0], node.args[1]
    w = _weight_out_in(ctx, b, transpose=True)
    if w is not None and getattr(a, "name", None) in ctx.signal:
        return [Emit("linear", [a], params={"weight": linear_stats(w, None)})]
    return [Emit("matmul", [a, b])]


def _ints(value, n: int) -> list[int]:
    value = list(value) if isinstance(value, (list, tuple)) else [value]
    return [int(v) for v in (value * n if len(value) == 1 else value)]


@handles("baddbmm")
def _baddbmm(node, ctx):
    """beta * input + alpha * (b1 @ b2)."""
    n = node.name
    beta, alpha = float(node.kwargs.get("beta", 1)), float(node.kwargs.get("alpha", 1))
    return [
        Emit("matmul", [node.args[1], node.args[2]], outputs=[f"{n}__mm"]),
        Emit("mul", [f"{n}__mm", alpha], outputs=[f"{n}__scaled"]),
        Emit("mul", [node.args[0], beta], outputs=[f"{n}__bias"]),
        Emit("add", [f"{n}__bias", f"{n}__scaled"]),
    ]


@handles("cat", "concat", "stack")
def _cat(node, ctx):
    dim = int(_arg(node, 1, "dim", 0))
    return [Emit("concat", list(node.args[0]), {"axis": dim})]


@handles("split", "split_with_sizes", "chunk", "unbind", "tensor_split")
def _split(node, ctx):
    count = len(node.meta.get("val", ()))
    return [Emit("split", [node.args[0]], outputs=[f"{node.name}.{i}" for i in range(count)])]


@handles("mean", "sum", "amax")
def _reduce(node, ctx):
    name = op_name(node.target)
    dims = _arg(node, 1, "dim", None)
    axes = [int(d) for d in (dims if isinstance(dims, (list, tuple)) else [dims])] if dims is not None else None
    op = {"mean": "reduce_mean", "sum": "reduce_sum", "amax": "reduce_max"}[name]
    return [Emit(op, [node.args[0]], {"axes": axes, "keepdims": int(bool(_arg(node, 2, "keepdim", False)))})]


@handles("constant_pad_nd", "pad")
def _pad(node, ctx):
    mode = node.kwargs.get("mode", _arg(node, 2, "mode", "constant")) if op_name(node.target) == "pad" else "constant"
    value = float(_arg(node, 3 if op_name(node.target) == "pad" else 2, "value", 0.0) or 0.0)
    return [Emit("pad", [node.args[0]], {"mode": mode if mode == "constant" else "reflect", "value": value})]


@handles("where")
def _where(node, ctx):
    return [Emit("where", list(node.args[:3]))]


@handles("masked_fill", "masked_fill_")
def _masked_fill(node, ctx):
    """x.masked_fill(mask, v) = where(mask, v, x): masked entries are replaced (attention and adjacency masks)."""
    value = node.args[2]
    return [Emit("where", [node.args[1], float(value) if isinstance(value, (int, float)) else value, node.args[0]])]


_GATES = {"lstm": ([0, 3, 1, 2], 4), "gru": ([1, 0, 2], 3), "rnn_tanh": ([0], 1), "rnn_relu": ([0], 1)}


@handles("lstm", "gru", "rnn_tanh", "rnn_relu")
def _recurrent(node, ctx):
    """One IR node per layer of the stack, each with one gate list per direction. torch packs gates as
    (i, f, g, o) for LSTM and (r, z, n) for GRU; the rule expects ONNX's (i, o, f, c) and (z, r, h)."""
    name = op_name(node.target)
    order, n_gates = _GATES[name]
    has_biases = bool(_arg(node, 3, "has_biases", True))
    layers, bidirectional = int(_arg(node, 4, "num_layers", 1)), bool(_arg(node, 7, "bidirectional", False))
    per_direction = 4 if has_biases else 2
    flat = list(node.args[2])
    shape = ctx.extra["shape"](node.args[0])
    steps = (shape[1] if bool(_arg(node, 8, "batch_first", False)) else shape[0]) if shape and len(shape) == 3 else None
    kind = "rnn" if name.startswith("rnn") else name
    attrs = {"kind": kind, "steps": steps, "activation": "relu" if name == "rnn_relu" else "tanh"}
    count = len(node.meta.get("val", ())) or 2
    emits, source = [], node.args[0]
    stored = ctx.extra.get("stored", lambda a: None)
    for layer in range(layers):
        directions, hidden_weights = [], []
        for direction in range(2 if bidirectional else 1):
            at = (layer * (2 if bidirectional else 1) + direction) * per_direction
            hidden_weights.append(stored(flat[at + 1]))  # W_hh: what a fix of the recurrence re-initialises
            arrays = [ctx.array(a) for a in flat[at : at + per_direction]]
            if arrays[0] is None or arrays[1] is None:
                return None
            w, r = arrays[0].astype(np.float64), arrays[1].astype(np.float64)
            hidden = r.shape[1]
            both = has_biases and arrays[2] is not None and arrays[3] is not None
            bias = (arrays[2] + arrays[3]).astype(np.float64) if both else np.zeros(n_gates * hidden)
            directions.append([recurrent_gate_stats(w, r, bias, slice(g * hidden, (g + 1) * hidden)) for g in order])
        last = layer == layers - 1
        outputs = [f"{node.name}.{i}" for i in range(count)] if last else [f"{node.name}__layer{layer}"]
        extra = {"hidden_tensors": hidden_weights} if all(hidden_weights) else {}
        emits.append(
            Emit(kind, [source], {**attrs, "hidden_size": hidden, **extra}, {"directions": directions}, outputs)
        )
        source = outputs[0]
    return emits


@handles("rnn_tanh_cell", "rnn_relu_cell")
def _rnn_cell(node, ctx):
    """One step of a plain RNN, as the ops it is: phi(W x + b_ih + U h + b_hh). A cell unrolled in a Python loop
    is then modeled step by step, like the unrolled cells of an ONNX file."""
    x, h, w_ih, w_hh = node.args[:4]
    b_ih, b_hh = (ctx.array(_arg(node, i, name)) for i, name in ((4, "b_ih"), (5, "b_hh")))
    W, U = ctx.array(w_ih), ctx.array(w_hh)
    if W is None or U is None:
        return None
    n, act = node.name, "relu" if op_name(node.target) == "rnn_relu_cell" else "tanh"
    hidden_is_signal = getattr(h, "name", None) in ctx.signal
    if not hidden_is_signal:  # h = 0 (the first step): only its bias remains
        b_ih = (b_ih if b_ih is not None else 0.0) + (b_hh if b_hh is not None else 0.0)
    emits = [Emit("linear", [x], params={"weight": linear_stats(W, b_ih)}, outputs=[f"{n}__input"])]
    if hidden_is_signal:
        emits += [
            Emit("linear", [h], params={"weight": linear_stats(U, b_hh)}, outputs=[f"{n}__hidden"]),
            Emit("add", [f"{n}__input", f"{n}__hidden"], outputs=[f"{n}__pre"]),
        ]
    return emits + [Emit(act, [f"{n}__pre" if hidden_is_signal else f"{n}__input"], outputs=[n])]


# the layer handlers (conv, normalisation, attention, pooling, up-sampling) register themselves there
from initcheck.frontends import torch_layers  # noqa: E402,F401

NO_OPS = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size", "_assert_async"}
