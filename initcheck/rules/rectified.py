"""Entries that are an affine map of a rectified Gaussian (docs/theory.md §4).

A ReLU of a Gaussian z = a + g is 0 with probability Φ(-a) and a + g above it: skewed, with a point mass. A batch
norm makes each channel of it zero-mean and unit-variance again, but not Gaussian, and a ReLU after it (DenseNet's
and pre-activation ResNets' norm-ReLU-conv layers) keeps what lies above the norm's zero: for a = 0,
E[relu(y)^2] = 0.742 of the variance, where a Gaussian gives 0.5 (the zoo's DenseNet's first norm+ReLU was
predicted 0.68x the measurement). This module says which tensors carry that shape; the activation rule takes
its moments over the mixture.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from initcheck.pointwise import recognize

# ops that map each entry (or each channel) affinely, or move entries without changing them: the shape stays
SAME_ENTRIES = frozenset(
    {"batch_norm", "dropout", "identity", "cast", "reshape", "flatten", "squeeze", "unsqueeze", "transpose", "slice"}
)


def forward(node, ins, out_value, out) -> tuple[float, float] | None:
    """(share, offset) for one output of `node`, from its inputs' and its op."""
    x = ins[0] if ins else None
    if node.op == "pointwise" and x is not None and _is_relu(node.attrs["program"]):
        if x.positive is not None:  # the identity on a nonnegative input
            return x.rectified
        return (1.0, x.m / math.sqrt(x.var)) if x.gaussian and x.var > 0 else None
    if node.op in SAME_ENTRIES:
        return x.rectified if x is not None else None
    if node.op == "concat":
        return _concatenated(node, ins)
    return None


@lru_cache(maxsize=1024)
def _is_relu(program) -> bool:
    return recognize(program) == "relu"


def _concatenated(node, ins) -> tuple[float, float] | None:
    """Parts side by side: the share by size, where the rectified parts share one offset."""
    sizes, offsets, rectified = [], set(), 0.0
    for value, x in zip(node.inputs, ins):
        n = value.numel if value is not None else None
        if n is None:
            return None
        sizes.append(n)
        if x is not None and x.rectified is not None:
            share, offset = x.rectified
            rectified += n * share
            offsets.add(round(offset, 3))
    if not offsets or len(offsets) > 1:
        return None
    return rectified / sum(sizes), offsets.pop()


# ops that keep each channel's entries where they are (and act on each channel alone)
_SAME_CHANNELS = frozenset({"batch_norm", "dropout", "identity", "cast"})


def channel_mask(value, forward: dict, depth: int = 8) -> np.ndarray | None:
    """Which channels (axis 1) of a partly rectified value are the rectified ones, where it is a per-channel map of
    a concatenation along them (DenseNet's batch norm of a ReLU's output beside convs' outputs); None elsewhere.
    An activation there passes each part its own share of the gradient (docs/theory.md §4)."""
    producer = value.producer if value is not None else None
    while producer is not None and producer.op in _SAME_CHANNELS and depth > 0:
        producer, depth = producer.inputs[0].producer if producer.inputs[0] is not None else None, depth - 1
    parts = channel_parts(producer, forward) if depth > 0 else None
    if parts is None:
        return None
    pieces = []
    for part, channels, x in parts:
        share = x.rectified[0] if x.rectified is not None else 0.0
        if 0.0 < share < 1.0:  # a concatenation of its own: its mask, or none can be said
            inner = channel_mask(part, forward, depth - 1)
            if inner is None:
                return None
            pieces.append(inner)
        else:
            pieces.append(np.full(channels, share == 1.0))
    return np.concatenate(pieces)


def channel_parts(node, forward: dict) -> list | None:
    """(value, channels, moments) of each part of a concatenation along the channels (axis 1 of a map), None where
    `node` is not one or a part's channels or moments are unknown."""
    if node is None or node.op != "concat":
        return None
    rank = len(node.outputs[0].shape or ())
    if rank < 3 or node.attrs.get("axis", 0) % rank != 1:
        return None
    parts = []
    for part in node.inputs:
        x = forward.get(part) if part is not None else None
        if x is None or part.shape is None or part.shape[1] is None:
            return None
        parts.append((part, part.shape[1], x))
    return parts
