"""The canonical nodes both frontends build, from arrays and attributes each has already read in its own
format: one place for what a convolution, a batch norm or an embedding carries into the IR (weight statistics,
sub-pixel coherence, eval-mode statistics), so ONNX and PyTorch files of one model give the same node.

Each builder returns `(op, attrs, params)`; the frontend adds the inputs it wires."""

from __future__ import annotations

from typing import Any

import numpy as np

from initcheck.stats import (
    CHUNK,
    affine_stats,
    batch_norm_eval_stats,
    conv_transpose_stats,
    linear_stats,
    subpixel_coherence,
    tensor_stats,
    untrained_running_stats,
)

Canonical = tuple[str, dict[str, Any], dict[str, Any]]


def window(
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
    pads_begin: list[int],
    pads_end: list[int],
    groups: int,
) -> dict[str, Any]:
    """The attributes of every sliding-window op (conv, conv_transpose, pooling)."""
    return {
        "kernel": list(kernel),
        "strides": list(strides),
        "dilations": list(dilations),
        "pads_begin": list(pads_begin),
        "pads_end": list(pads_end),
        "groups": int(groups),
    }


def conv(
    w: np.ndarray,
    bias: np.ndarray | None,
    attrs: dict[str, Any],
    transposed: bool = False,
    shuffle_block: int | None = None,
    channel_first: bool = True,
) -> Canonical:
    """A convolution. shuffle_block: the block of the pixel shuffle / DepthToSpace it feeds, whose sub-pixel
    kernels' coherence the sub-pixel check reads; channel_first: its channel order is c r^2 + phase (PixelShuffle,
    DepthToSpace CRD), else phase C + c (DepthToSpace DCR)."""
    groups = attrs["groups"]
    if transposed:
        return (
            "conv_transpose",
            attrs,
            {"weight": conv_transpose_stats(w, bias, groups, attrs["strides"], attrs["dilations"])},
        )
    params: dict[str, Any] = {
        "weight": linear_stats(w, bias, fan_out=(w.shape[0] // groups) * int(np.prod(w.shape[2:])))
    }
    if shuffle_block is not None:
        coherence = subpixel_coherence(w, shuffle_block, channel_first=channel_first)
        if coherence is not None:
            params["subpixel"] = {"block": shuffle_block, "coherence": coherence, "channel_first": channel_first}
    return "conv", attrs, params


def batch_norm(
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    mean: np.ndarray | None,
    var: np.ndarray | None,
    eps: float,
    training: bool,
) -> Canonical | None:
    """A batch norm. Missing parameters take their defaults (scale 1, shift 0, running mean 0, variance 1); eval
    mode with running statistics never trained (mean 0, var 1) is analysed with batch statistics, as it will
    train, and flagged so."""
    given = [gamma, beta, mean, var]
    channels = next((a.size for a in given if a is not None), None)
    if channels is None:
        return None
    defaults = (np.ones(channels), np.zeros(channels), np.zeros(channels), np.ones(channels))
    g, b, m, v = (a if a is not None else d for a, d in zip(given, defaults))
    params: dict[str, Any] = dict(affine_stats(gamma, beta))
    params["eval"] = batch_norm_eval_stats(g, b, m, v, eps)
    untrained = not training and untrained_running_stats(mean, var)
    return "batch_norm", {"epsilon": eps, "training": training or untrained, "untrained_stats": untrained}, params


def embedding(table: np.ndarray) -> Canonical:
    """A table lookup; `coherent` is the energy of the table's mean row (the part every token shares);
    `padding_rows` the rows that are all zero where the others are not (a padding id's, zeroed at init: no real
    token, and a norm of its zero vector divides by its epsilon alone, so the probe leaves it out)."""
    columns = np.nan_to_num(table.mean(axis=0, dtype=np.float64))
    params = {"table": tensor_stats(table), "coherent": float(np.mean(columns**2))}
    if table.ndim == 2 and table.shape[0] > 1:
        zero = _zero_rows(table)
        if 0 < zero.size < table.shape[0] // 2:
            params["padding_rows"] = tuple(int(i) for i in zero[:64])
    return "embedding", {}, params


def _zero_rows(table: np.ndarray) -> np.ndarray:
    """The indices of the rows that are all zero, a block of rows at a time (a vocabulary table is streamed)."""
    step = max(1, CHUNK // max(table.shape[1], 1))
    found = [
        start + np.flatnonzero(~np.any(table[start : start + step], axis=1)) for start in range(0, len(table), step)
    ]
    return np.concatenate(found)
