"""An executable torch form of an ONNX graph, for the gradient half of the probe.

One function per ONNX op (the ops the frontend models); values keep their ONNX names, so measurements map
onto the IR. Its forward values are cross-checked against onnxruntime by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from initcheck.frontends.onnx_ops import attributes
from initcheck.registry import Table

OPS = Table("torch kernel for ONNX op")
op = OPS.register


class NotExecutable(Exception):
    pass


def _int_list(t) -> list[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


_UNARY = {
    "Relu": torch.relu,
    "Tanh": torch.tanh,
    "Sigmoid": torch.sigmoid,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal,
    "Abs": torch.abs,
    "Neg": torch.neg,
    "Erf": torch.erf,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Softplus": F.softplus,
    "Softsign": F.softsign,
    "Mish": F.mish,
    "HardSwish": F.hardswish,
    "Identity": lambda x: x,
    "Sign": torch.sign,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Not": torch.logical_not,
    "IsNaN": torch.isnan,
    "IsInf": torch.isinf,
}
_BINARY: dict[str, Callable] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": torch.div,
    "Pow": torch.pow,
    "Max": torch.maximum,
    "Min": torch.minimum,
    "Equal": torch.eq,
    "Less": torch.lt,
    "Greater": torch.gt,
    "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
}


@op(*_UNARY)
def _unary(node, x, a):
    return _UNARY[node.op_type](x[0])


@op(*_BINARY)
def _binary(node, x, a):
    if node.op_type in ("Div",) and not x[0].is_floating_point() and not x[1].is_floating_point():
        return torch.div(x[0], x[1], rounding_mode="trunc")
    return _BINARY[node.op_type](x[0], x[1])


@op("Mod")
def _mod(node, x, a):
    """fmod=1: the sign of the dividend (C fmod); fmod=0: the sign of the divisor (Python %), integers only."""
    return torch.fmod(x[0], x[1]) if a.get("fmod", 0) else torch.remainder(x[0], x[1])


@op("Sum")
def _sum(node, x, a):
    out = x[0]
    for t in x[1:]:
        out = out + t
    return out


@op("LeakyRelu")
def _leaky(node, x, a):
    return F.leaky_relu(x[0], a.get("alpha", 0.01))


@op("PRelu")
def _prelu(node, x, a):
    return torch.where(x[0] >= 0, x[0], x[0] * x[1])


@op("Elu", "Celu")
def _elu(node, x, a):
    return (F.elu if node.op_type == "Elu" else F.celu)(x[0], a.get("alpha", 1.0))


@op("Selu")
def _selu(node, x, a):
    return a.get("gamma", 1.0507009873554805) * F.elu(x[0], a.get("alpha", 1.6732632423543772))


@op("HardSigmoid")
def _hsig(node, x, a):
    return torch.clamp(a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5), 0, 1)


@op("Gelu")
def _gelu(node, x, a):
    return F.gelu(x[0], approximate=a.get("approximate", "none"))


@op("Clip")
def _clip(node, x, a):
    lo = a.get("min", x[1] if len(x) > 1 and x[1] is not None else None)
    hi = a.get("max", x[2] if len(x) > 2 and x[2] is not None else None)
    return torch.clamp(x[0], None if lo is None else float(lo), None if hi is None else float(hi))


@op("MatMul")
def _matmul(node, x, a):
    return torch.matmul(x[0], x[1])


@op("Gemm")
def _gemm(node, x, a):
    A = x[0].T if a.get("transA", 0) else x[0]
    B = x[1].T if a.get("transB", 0) else x[1]
    y = a.get("alpha", 1.0) * (A @ B)
    return y + a.get("beta", 1.0) * x[2] if len(x) > 2 and x[2] is not None else y


def _pads(a, n, node_input_shape=None, kernel=None, strides=None, dilations=None):
    pads = list(a.get("pads", [0] * 2 * n))
    if a.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER") and node_input_shape is not None:
        pads = [0] * 2 * n
        for i, (length, k, s, d) in enumerate(zip(node_input_shape, kernel, strides, dilations)):
            total = max((-(-length // s) - 1) * s + (k - 1) * d + 1 - length, 0)
            pads[i] = total // 2 if a["auto_pad"] == "SAME_UPPER" else total - total // 2
            pads[i + n] = total - pads[i]
    return pads


def _pad_input(t, pads, n, value=0.0):
    begin, end = pads[:n], pads[n:]
    if not any(pads):
        return t
    spec = []
    for b, e in zip(reversed(begin), reversed(end)):
        spec += [b, e]
    return F.pad(t, spec, value=value)


@op("Conv")
def _conv(node, x, a):
    w = x[1]
    n = w.ndim - 2
    strides, dilations = a.get("strides", [1] * n), a.get("dilations", [1] * n)
    pads = _pads(a, n, x[0].shape[2:], w.shape[2:], strides, dilations)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    return conv(_pad_input(x[0], pads, n), w, x[2] if len(x) > 2 else None, strides, 0, dilations, a.get("group", 1))


@op("ConvTranspose")
def _conv_t(node, x, a):
    w = x[1]
    n = w.ndim - 2
    pads = a.get("pads", [0] * 2 * n)
    if pads[:n] != pads[n:]:
        raise NotExecutable("asymmetric ConvTranspose pads")
    conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[n]
    return conv(
        x[0],
        w,
        x[2] if len(x) > 2 else None,
        a.get("strides", [1] * n),
        pads[:n],
        a.get("output_padding", [0] * n),
        a.get("group", 1),
        a.get("dilations", [1] * n),
    )


@op("BatchNormalization")
def _bn(node, x, a):
    training = bool(a.get("training_mode", 0))
    return (
        F.batch_norm(x[0], x[3], x[4], x[1], x[2], training=training, eps=a.get("epsilon", 1e-5))
        if not training
        else F.batch_norm(x[0], None, None, x[1], x[2], training=True, eps=a.get("epsilon", 1e-5))
    )


@op("LayerNormalization")
def _ln(node, x, a):
    axis = a.get("axis", -1) % x[0].ndim
    return F.layer_norm(x[0], x[0].shape[axis:], x[1], x[2] if len(x) > 2 else None, a.get("epsilon", 1e-5))


@op("SimplifiedLayerNormalization", "RMSNormalization")
def _rms(node, x, a):
    axis = a.get("axis", -1) % x[0].ndim
    dims = tuple(range(axis, x[0].ndim))
    y = x[0] * torch.rsqrt(x[0].pow(2).mean(dims, keepdim=True) + a.get("epsilon", 1e-5))
    return y * x[1] if len(x) > 1 and x[1] is not None else y


@op("GroupNormalization")
def _gn(node, x, a):
    g = a["num_groups"]
    scale, bias = x[1], x[2]
    if scale.numel() == g:
        c = x[0].shape[1]
        scale, bias = scale.repeat_interleave(c // g), bias.repeat_interleave(c // g)
    return F.group_norm(x[0], g, scale, bias, a.get("epsilon", 1e-5))


@op("InstanceNormalization")
def _in(node, x, a):
    return F.instance_norm(x[0], weight=x[1], bias=x[2], eps=a.get("epsilon", 1e-5))


@op("LRN")
def _lrn(node, x, a):
    return F.local_response_norm(x[0], a["size"], a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0))


def _window(a, x):
    k = a["kernel_shape"]
    n = len(k)
    strides, dil = a.get("strides", [1] * n), a.get("dilations", [1] * n)
    pads = _pads(a, n, x.shape[2:], k, strides, dil)
    return k, n, strides, dil, pads


@op("MaxPool")
def _maxpool(node, x, a):
    k, n, strides, dil, pads = _window(a, x[0])
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
    return pool(_pad_input(x[0], pads, n, -math.inf), k, strides, 0, dil, bool(a.get("ceil_mode", 0)))


@op("AveragePool")
def _avgpool(node, x, a):
    k, n, strides, _, pads = _window(a, x[0])
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
    ceil = bool(a.get("ceil_mode", 0))
    total = pool(_pad_input(x[0], pads, n), k, strides, 0, ceil, True)
    if a.get("count_include_pad", 0) or not any(pads):
        return total
    # average over the positions inside the input only (ONNX's default), for any padding
    inside = pool(_pad_input(torch.ones_like(x[0][:1, :1]), pads, n), k, strides, 0, ceil, True)
    return total / inside


@op("GlobalAveragePool")
def _gap(node, x, a):
    return x[0].mean(dim=tuple(range(2, x[0].ndim)), keepdim=True)


@op("GlobalMaxPool")
def _gmp(node, x, a):
    return x[0].amax(dim=tuple(range(2, x[0].ndim)), keepdim=True)


@op("Softmax", "LogSoftmax")
def _softmax(node, x, a):
    """Opset < 13: default axis 1 and the input flattened to 2-D at the axis."""
    fn = torch.softmax if node.op_type == "Softmax" else torch.log_softmax
    if a["_opset"] >= 13:
        return fn(x[0], a.get("axis", -1))
    axis = a.get("axis", 1) % x[0].ndim
    flat = x[0].reshape(int(np.prod(x[0].shape[:axis])), -1)
    return fn(flat, 1).reshape(x[0].shape)


@op("Dropout")
def _dropout(node, x, a):
    training = bool(x[2].item()) if len(x) > 2 and x[2] is not None else False
    ratio = float(x[1].item()) if len(x) > 1 and x[1] is not None else a.get("ratio", 0.5)
    return F.dropout(x[0], ratio, training)


def _axes(node, x, a, index=1):
    if "axes" in a:
        return list(a["axes"])
    return _int_list(x[index]) if len(x) > index and x[index] is not None else None


@op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")
def _reduce(node, x, a):
    axes = _axes(node, x, a)
    keep = bool(a.get("keepdims", 1))
    dims = tuple(range(x[0].ndim)) if not axes else tuple(axes)
    return _REDUCTIONS[node.op_type](x[0], dim=dims, keepdim=keep)


_REDUCTIONS: dict[str, Callable] = {
    "ReduceMean": torch.mean,
    "ReduceSum": torch.sum,
    "ReduceMax": torch.amax,
    "ReduceMin": torch.amin,
}


# shape and layout ops, and the recurrent layers, register themselves there
from initcheck.probes import onnx_torch_recurrent, onnx_torch_shape  # noqa: E402,F401


def run_node(node, inputs: list, opset: int):
    fn = OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if fn is None:
        raise NotExecutable(f"ONNX op {node.op_type} has no torch equivalent here")
    return fn(node, inputs, {**attributes(node), "_opset": opset})
