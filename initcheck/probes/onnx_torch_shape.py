"""Shape and layout ops of the executable torch form of an ONNX graph (see onnx_torch)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from initcheck.probes.onnx_torch import _axes, _int_list, op


@op("Reshape")
def _reshape(node, x, a):
    shape = _int_list(x[1])
    shape = [x[0].shape[i] if s == 0 and not a.get("allowzero", 0) else s for i, s in enumerate(shape)]
    return x[0].reshape(shape)


@op("Flatten")
def _flatten(node, x, a):
    axis = a.get("axis", 1)
    axis = axis + x[0].ndim if axis < 0 else axis  # axis == rank is valid: [prod(all), 1]
    return x[0].reshape(int(np.prod(x[0].shape[:axis])), int(np.prod(x[0].shape[axis:])))


@op("Transpose")
def _transpose(node, x, a):
    perm = a.get("perm", list(range(x[0].ndim))[::-1])
    return x[0].permute(perm)


@op("Squeeze")
def _squeeze(node, x, a):
    axes = _axes(node, x, a)
    if axes is None:
        return x[0].squeeze()
    out = x[0]
    for axis in sorted((ax % x[0].ndim for ax in axes), reverse=True):
        out = out.squeeze(axis)
    return out


@op("Unsqueeze")
def _unsqueeze(node, x, a):
    out = x[0]
    axes = _axes(node, x, a)
    rank = out.ndim + len(axes)
    for axis in sorted(ax % rank for ax in axes):
        out = out.unsqueeze(axis)
    return out


@op("Concat")
def _concat(node, x, a):
    return torch.cat([t for t in x if t is not None], dim=a["axis"])


@op("Split")
def _split(node, x, a):
    axis = a.get("axis", 0)
    sizes = a.get("split") or (_int_list(x[1]) if len(x) > 1 and x[1] is not None else None)
    if sizes is None:
        return torch.chunk(x[0], len(node.output), dim=axis)
    return torch.split(x[0], sizes, dim=axis)


@op("Slice")
def _slice(node, x, a):
    starts, ends = _int_list(x[1]), _int_list(x[2])
    axes = _int_list(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
    steps = _int_list(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
    out = x[0]
    for s, e, ax, st in zip(starts, ends, axes, steps):
        length = out.shape[ax]
        if st < 0:  # backwards (a reversed sequence): the ONNX clamping, then the indices it walks
            s = max(min(s + length if s < 0 else s, length - 1), -1)
            e = max(min(e + length if e < 0 else e, length - 1), -1)
            out = torch.index_select(out, ax, torch.arange(s, e, st, device=out.device))
            continue
        s = max(min(s + length if s < 0 else s, length), 0)
        e = max(min(e + length if e < 0 else e, length), 0)
        out = out.narrow(ax, s, max(e - s, 0))[(slice(None),) * (ax % out.ndim) + (slice(None, None, st),)]
    return out


@op("Gather")
def _gather(node, x, a):
    axis = a.get("axis", 0)
    idx = x[1].long()
    idx = torch.where(idx < 0, idx + x[0].shape[axis], idx)
    return torch.index_select(x[0], axis, idx.reshape(-1)).reshape(
        x[0].shape[:axis] + idx.shape + x[0].shape[axis + 1 :]
    )


@op("GatherND")
def _gather_nd(node, x, a):
    """data[indices[..., 0], indices[..., 1], ...], after `batch_dims` leading dimensions shared by both."""
    data, idx, batch = x[0], x[1].long(), int(a.get("batch_dims", 0))
    if batch == 0:
        return data[tuple(idx[..., i] for i in range(idx.shape[-1]))]
    lead = data.shape[:batch]
    flat_data, flat_idx = data.reshape(-1, *data.shape[batch:]), idx.reshape(-1, *idx.shape[batch:])
    parts = [d[tuple(i[..., k] for k in range(i.shape[-1]))] for d, i in zip(flat_data, flat_idx)]
    out = torch.stack(parts)
    return out.reshape(*lead, *out.shape[1:])


@op("GatherElements")
def _gather_elements(node, x, a):
    return torch.gather(x[0], a.get("axis", 0), x[1].long())


@op("Expand")
def _expand(node, x, a):
    shape = _int_list(x[1])
    target = torch.broadcast_shapes(tuple(x[0].shape), tuple(shape))
    return x[0].expand(target)


@op("Tile")
def _tile(node, x, a):
    return x[0].repeat(_int_list(x[1]))


@op("Where")
def _where(node, x, a):
    return torch.where(x[0].bool(), x[1], x[2])


@op("Cast")
def _cast(node, x, a):
    dtype = helper.tensor_dtype_to_np_dtype(a["to"])
    return x[0].to(torch.from_numpy(np.zeros(1, dtype=dtype)).dtype)


@op("Shape")
def _shape(node, x, a):
    shape = torch.tensor(list(x[0].shape), dtype=torch.int64)
    return shape[a.get("start", 0) : a.get("end", None)]


@op("ConstantOfShape")
def _cos(node, x, a):
    value = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
    # the dtype from an empty array of value's: value itself is read-only (a view of the file's bytes), and torch
    # warns on stderr when it wraps one
    dtype = torch.from_numpy(np.zeros(1, dtype=value.dtype)).dtype
    return torch.full(_int_list(x[0]), float(value.reshape(-1)[0]), dtype=dtype)


@op("Range")
def _range(node, x, a):
    return torch.arange(x[0].item(), x[1].item(), x[2].item(), dtype=x[0].dtype)


@op("Pad")
def _pad(node, x, a):
    pads = a.get("pads") or _int_list(x[1])
    n = len(pads) // 2
    value = float(a.get("value", x[2].item() if len(x) > 2 and x[2] is not None else 0.0))
    mode = a.get("mode", "constant")
    spec = []
    for b, e in zip(reversed(pads[:n]), reversed(pads[n:])):
        spec += [b, e]
    if mode == "constant":
        return F.pad(x[0], spec, value=value)
    return F.pad(x[0], spec[: 2 * (x[0].ndim - 2)], mode={"edge": "replicate"}.get(mode, mode))


@op("Resize", "Upsample")
def _resize(node, x, a):
    mode = a.get("mode", "nearest")
    sizes = None
    if len(x) > 3 and x[3] is not None and x[3].numel():
        sizes = _int_list(x[3])[2:]
    scales = None
    for t in x[1:3]:
        if t is not None and t.is_floating_point() and t.numel():
            scales = [float(v) for v in t.tolist()][2:]
    if "scales" in a:
        scales = list(a["scales"])[2:]
    torch_mode = "nearest" if mode == "nearest" else {1: "linear", 2: "bilinear", 3: "trilinear"}[x[0].ndim - 2]
    kwargs = (
        {} if torch_mode == "nearest" else {"align_corners": a.get("coordinate_transformation_mode") == "align_corners"}
    )
    return F.interpolate(x[0], size=sizes, scale_factor=None if sizes else scales, mode=torch_mode, **kwargs)


@op("DepthToSpace")
def _d2s(node, x, a):
    b = a["blocksize"]
    if a.get("mode", "DCR") == "CRD":
        return F.pixel_shuffle(x[0], b)
    n, c, h, w = x[0].shape
    t = x[0].reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    return t.reshape(n, c // (b * b), h * b, w * b)


@op("SpaceToDepth")
def _s2d(node, x, a):
    b = a["blocksize"]
    n, c, h, w = x[0].shape
    t = x[0].reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return t.reshape(n, c * b * b, h // b, w // b)
