"""Torch kernels for ONNX RNN, GRU and LSTM (default activations, no clipping or peepholes), step by step so
that autograd measures gradients through time as the file's runtime computes the forward pass."""

from __future__ import annotations

import torch

from initcheck.probes.onnx_torch import NotExecutable, op

_DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}
_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _activation_names(a) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in a.get("activations", [])]


def _optional(x: list, index: int):
    return x[index] if len(x) > index else None


@op("RNN", "GRU", "LSTM")
def _recurrent(node, x, a):
    kind, hidden = node.op_type, int(a["hidden_size"])
    names = _activation_names(a)
    relu = kind == "RNN" and names[:1] == ["Relu"]
    if (
        "clip" in a
        or _optional(x, 7) is not None
        or (names[: len(_DEFAULT_ACTIVATIONS[kind])] not in ([], _DEFAULT_ACTIVATIONS[kind]) and not relu)
    ):
        raise NotExecutable(f"{kind} with clipping, peepholes or non-default activations")
    if a.get("input_forget", 0):
        raise NotExecutable("LSTM with coupled input and forget gates")
    layout = int(a.get("layout", 0))
    seq = x[0].transpose(0, 1) if layout else x[0]  # [steps, batch, features]
    W, R, B = x[1], x[2], _optional(x, 3)
    lengths = _optional(x, 4)
    if lengths is not None and bool((lengths != seq.shape[0]).any()):
        raise NotExecutable(f"{kind} with sequences of different lengths")
    h0, c0 = _optional(x, 5), _optional(x, 6)
    direction = a.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    reverse = [direction == "reverse"] if direction != "bidirectional" else [False, True]
    n = _GATES[kind]
    outputs, last_h, last_c = [], [], []
    for d, backwards in enumerate(reverse):
        bias = B[d] if B is not None else torch.zeros(2 * n * hidden, dtype=seq.dtype, device=seq.device)
        zeros = torch.zeros(seq.shape[1], hidden, dtype=seq.dtype, device=seq.device)
        h = h0[d] if h0 is not None else zeros
        c = c0[d] if c0 is not None else zeros
        steps = range(seq.shape[0] - 1, -1, -1) if backwards else range(seq.shape[0])
        ys = {}
        for t in steps:
            h, c = _STEP[kind](seq[t], h, c, W[d], R[d], bias[: n * hidden], bias[n * hidden :], a, relu)
            ys[t] = h
        outputs.append(torch.stack([ys[t] for t in range(seq.shape[0])]))
        last_h.append(h)
        last_c.append(c)
    Y = torch.stack(outputs, dim=1)  # [steps, directions, batch, hidden]
    Y_h, Y_c = torch.stack(last_h), torch.stack(last_c)
    if layout:
        Y, Y_h, Y_c = Y.permute(2, 0, 1, 3), Y_h.transpose(0, 1), Y_c.transpose(0, 1)
    return (Y, Y_h, Y_c)[: len(node.output)]


def _rnn_step(x, h, c, W, R, Wb, Rb, a, relu):
    pre = x @ W.T + Wb + h @ R.T + Rb
    return (torch.relu(pre) if relu else torch.tanh(pre)), c


def _gru_step(x, h, c, W, R, Wb, Rb, a, relu):
    """ONNX gate order z, r, h; linear_before_reset 1 is torch's form r (R_h h + Rb_h)."""
    xz, xr, xh = (x @ W.T + Wb).chunk(3, dim=-1)
    Rz, Rr, Rh = R.chunk(3, dim=0)
    Rbz, Rbr, Rbh = Rb.chunk(3)
    z = torch.sigmoid(xz + h @ Rz.T + Rbz)
    r = torch.sigmoid(xr + h @ Rr.T + Rbr)
    if a.get("linear_before_reset", 0):
        n = torch.tanh(xh + r * (h @ Rh.T + Rbh))
    else:
        n = torch.tanh(xh + (r * h) @ Rh.T + Rbh)
    return (1 - z) * n + z * h, c


def _lstm_step(x, h, c, W, R, Wb, Rb, a, relu):
    """ONNX gate order i, o, f, c."""
    i, o, f, g = (x @ W.T + Wb + h @ R.T + Rb).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


_STEP = {"RNN": _rnn_step, "GRU": _gru_step, "LSTM": _lstm_step}
