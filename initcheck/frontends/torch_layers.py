"""ATen layer handlers: convolutions, normalisations, embeddings, softmax and attention, pooling and
up-sampling. Registered into torch_ops.HANDLERS; same contract (see torch_ops)."""

from __future__ import annotations

import math

from initcheck.frontends import canonical
from initcheck.frontends.torch_ops import Emit, _arg, _ints, handles, op_name
from initcheck.stats import (
    affine_stats,
)


@handles("conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def _conv(node, ctx):
    name = op_name(node.target)
    w = ctx.array(node.args[1])
    if w is None:
        return None
    n = w.ndim - 2
    bias = ctx.array(_arg(node, 2, "bias"))
    strides = _ints(_arg(node, 3, "stride", 1), n)
    pads = _arg(node, 4, "padding", 0)
    if name == "convolution":
        dilations, transposed = _ints(_arg(node, 5, "dilation", 1), n), bool(_arg(node, 6, "transposed", False))
        groups = int(_arg(node, 8, "groups", 1))
    elif name.startswith("conv_transpose"):
        dilations, transposed, groups = _ints(_arg(node, 7, "dilation", 1), n), True, int(_arg(node, 6, "groups", 1))
    else:
        dilations, transposed, groups = _ints(_arg(node, 5, "dilation", 1), n), False, int(_arg(node, 6, "groups", 1))
    kernel = list(w.shape[2:])
    if isinstance(pads, str):  # 'same' / 'valid'
        total = [(k - 1) * d for k, d in zip(kernel, dilations)] if pads == "same" else [0] * n
        begin = [t // 2 for t in total]
        pads_begin, pads_end = begin, [t - b for t, b in zip(total, begin)]
    else:
        pads_begin = pads_end = _ints(pads, n)
    attrs = canonical.window(kernel, strides, dilations, pads_begin, pads_end, groups)
    block = None if transposed else _pixel_shuffle_after(node)
    op, attrs, params = canonical.conv(w, bias, attrs, transposed, block)
    return [Emit(op, [node.args[0]], attrs, params)]


def _pixel_shuffle_after(node) -> int | None:
    """The block of the pixel_shuffle a conv feeds (directly or through one elementwise op), if any."""
    readers = list(node.users)
    if len(readers) == 1 and op_name(readers[0].target) != "pixel_shuffle":
        readers = list(readers[0].users)
    shuffle = next((r for r in readers if op_name(r.target) == "pixel_shuffle"), None)
    return int(shuffle.args[1]) if shuffle is not None else None


def _affine_params(ctx, weight, bias) -> dict:
    return affine_stats(ctx.array(weight), ctx.array(bias))


@handles("layer_norm", "native_layer_norm")
def _layer_norm(node, ctx):
    shape = node.args[1]
    eps = float(_arg(node, 4, "eps", 1e-5))
    params = _affine_params(ctx, _arg(node, 2, "weight"), _arg(node, 3, "bias"))
    return [Emit("layer_norm", [node.args[0]], {"axis": -len(shape), "epsilon": eps}, params)]


@handles("rms_norm")
def _rms_norm(node, ctx):
    eps = _arg(node, 3, "eps", None)
    params = _affine_params(ctx, _arg(node, 2, "weight"), None)
    return [
        Emit("rms_norm", [node.args[0]], {"axis": -len(node.args[1]), "epsilon": float(eps) if eps else 1e-6}, params)
    ]


@handles("group_norm")
def _group_norm(node, ctx):
    params = _affine_params(ctx, _arg(node, 2, "weight"), _arg(node, 3, "bias"))
    return [
        Emit(
            "group_norm",
            [node.args[0]],
            {"num_groups": int(node.args[1]), "epsilon": float(_arg(node, 4, "eps", 1e-5))},
            params,
        )
    ]


@handles("instance_norm")
def _instance_norm(node, ctx):
    params = _affine_params(ctx, _arg(node, 1, "weight"), _arg(node, 2, "bias"))
    return [Emit("instance_norm", [node.args[0]], {"epsilon": float(_arg(node, 7, "eps", 1e-5))}, params)]


@handles(
    "batch_norm",
    "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit_functional",
    "native_batch_norm",
    "_native_batch_norm_legit",
)
def _batch_norm(node, ctx):
    name = op_name(node.target)
    weight, bias, mean, var = (
        _arg(node, i, k) for i, k in ((1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var"))
    )
    if name == "_native_batch_norm_legit_no_training":
        training, eps = False, float(_arg(node, 6, "eps", 1e-5))
    else:
        training, eps = bool(_arg(node, 5, "training", False)), float(_arg(node, 7, "eps", 1e-5))
    gamma, beta, running_mean, running_var = (ctx.array(a) for a in (weight, bias, mean, var))
    built = canonical.batch_norm(gamma, beta, running_mean, running_var, eps, training or ctx.training)
    if built is None:
        return None
    op, attrs, params = built
    return [Emit(op, [node.args[0]], attrs, params)]


@handles("embedding")
def _embedding(node, ctx):
    table = ctx.array(node.args[0])
    if table is None:
        return None
    op, _, params = canonical.embedding(table)
    return [Emit(op, [node.args[1]], {"weight_source": node.args[0].name}, params=params)]


@handles("softmax", "_softmax", "log_softmax", "_log_softmax")
def _softmax(node, ctx):
    name = op_name(node.target).lstrip("_")
    dim = int(node.args[1])
    shape = ctx.extra["shape"](node.args[0])
    size = shape[dim] if shape and shape[dim] is not None else None
    return [Emit(name, [node.args[0]], {"axis": dim, "size": size})]


@handles("scaled_dot_product_attention")
def _sdpa(node, ctx):
    """Lowered onto existing rules: q k^T, scaling, optional mask, softmax, times v."""
    q, k, v = node.args[:3]
    mask = _arg(node, 3, "attn_mask")
    causal = bool(_arg(node, 5, "is_causal", False))
    shape_q = ctx.extra["shape"](q)
    d = shape_q[-1] if shape_q else None
    scale = node.kwargs.get("scale") or (1 / math.sqrt(d) if d else 1.0)
    n = node.name
    shape_k = ctx.extra["shape"](k)
    swap = {"perm": [*range(len(shape_k) - 2), len(shape_k) - 1, len(shape_k) - 2]} if shape_k else {}
    emits = [
        Emit("transpose", [k], swap, outputs=[f"{n}__kt"]),
        Emit("matmul", [q, f"{n}__kt"], outputs=[f"{n}__logits"]),
        Emit("mul", [f"{n}__logits", float(scale)], outputs=[f"{n}__scaled"]),
    ]
    logits = f"{n}__scaled"
    if mask is not None:
        emits.append(
            Emit(
                "add" if ctx.array(mask) is None or ctx.array(mask).dtype.kind == "f" else "where",
                [logits, mask]
                if ctx.array(mask) is None or ctx.array(mask).dtype.kind == "f"
                else [mask, logits, -1e9],
                outputs=[f"{n}__masked"],
            )
        )
        logits = f"{n}__masked"
    if causal:
        emits.append(Emit("causal_mask", [logits], outputs=[f"{n}__causal"]))
        logits = f"{n}__causal"
    emits += [
        Emit(
            "softmax",
            [logits],
            {"axis": -1, "size": ctx.extra["shape"](k)[-2] if ctx.extra["shape"](k) else None},
            outputs=[f"{n}__probs"],
        ),
        Emit("matmul", [f"{n}__probs", v]),
    ]
    return emits


def _pool_attrs(node, n: int, kernel_index: int = 1) -> dict:
    kernel = _ints(node.args[kernel_index], n)
    stride = _arg(node, kernel_index + 1, "stride", None)
    strides = _ints(stride, n) if stride else kernel
    pads = _ints(_arg(node, kernel_index + 2, "padding", 0), n)
    dil = _ints(_arg(node, kernel_index + 3, "dilation", 1), n) if "max" in op_name(node.target) else [1] * n
    return {"kernel": kernel, "strides": strides, "pads_begin": pads, "pads_end": pads, "dilations": dil}


@handles("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices")
def _max_pool(node, ctx):
    n = len(ctx.extra["shape"](node.args[0])) - 2
    return [Emit("max_pool", [node.args[0]], _pool_attrs(node, n))]


@handles("avg_pool1d", "avg_pool2d", "avg_pool3d")
def _avg_pool(node, ctx):
    n = len(ctx.extra["shape"](node.args[0])) - 2
    return [Emit("avg_pool", [node.args[0]], _pool_attrs(node, n))]


@handles(
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool2d", "adaptive_max_pool1d"
)
def _adaptive_pool(node, ctx):
    shape = ctx.extra["shape"](node.args[0])
    out = _ints(node.args[1], len(shape) - 2)
    is_max = "max" in op_name(node.target)
    if all(o == 1 for o in out):
        return [Emit("global_max_pool" if is_max else "global_avg_pool", [node.args[0]])]
    kernel = [max(i // o, 1) for i, o in zip(shape[2:], out)]
    attrs = {
        "kernel": kernel,
        "strides": kernel,
        "pads_begin": [0] * len(out),
        "pads_end": [0] * len(out),
        "dilations": [1] * len(out),
    }
    return [Emit("max_pool" if is_max else "avg_pool", [node.args[0]], attrs)]


@handles(
    "upsample_nearest1d",
    "upsample_nearest2d",
    "upsample_nearest3d",
    "upsample_bilinear2d",
    "upsample_linear1d",
    "upsample_trilinear3d",
    "_upsample_nearest_exact2d",
    "upsample_bicubic2d",
)
def _upsample(node, ctx):
    shape_in, shape_out = ctx.extra["shape"](node.args[0]), ctx.extra["shape"](node)
    scales = [o / i for o, i in zip(shape_out[2:], shape_in[2:])] if shape_in and shape_out else []
    mode = "nearest" if "nearest" in op_name(node.target) else "linear"
    return [Emit("resize", [node.args[0]], {"mode": mode, "scales": scales})]
