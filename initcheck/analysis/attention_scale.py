"""How much of 1/sqrt(d_k) an attention applies, in whatever form it is written.

Models scale q k^T by 1/sqrt(d_k) in many ways: a Mul or Div of the logits (SDPA's `scale`), a Sqrt split that
multiplies q and k by d_k^-1/4 each (ViT's legacy ONNX export), a scaled q (HF's `query * scaling`), or folded into
the q projection's initialisation (T5: q's std is sqrt(d_k) smaller than k's). The effective scale is the product of
the constant factors on the logits and on the q and k paths back to their projections, times the ratio of the q and
k projections' weight stds when q is initialised smaller. A scale within a factor 2 of 1/sqrt(d_k) counts as present.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from initcheck import pointwise
from initcheck.ir import Node, Value
from initcheck.passes import is_signal

_PASSIVE = {
    "reshape",
    "transpose",
    "slice",
    "cast",
    "dropout",
    "causal_mask",
    "where",
    "add",
    "sub",
    "mul",
    "div",
    "pointwise",
    "expand",
    "squeeze",
    "unsqueeze",
    "concat",
}
_MAX_STEPS = 12


@dataclass(frozen=True)
class AttentionScale:
    matmul: Node  # q @ k^T
    d_k: int | None
    constant: float  # product of constant factors on the logits and the q, k paths
    folded: float  # q projection std / k projection std (1 when not folded or unknown)
    q_proj: Node | None = None  # the weighted layers that make q and k (None where none is found)
    k_proj: Node | None = None

    @property
    def effective(self) -> float:
        return self.constant * self.folded

    @property
    def missing(self) -> bool:
        """No form of 1/sqrt(d_k) (a scale more than 2x above it)."""
        return bool(self.d_k and self.d_k > 1 and self.effective * math.sqrt(self.d_k) > 2.0)


def attention_scale(softmax: Node) -> AttentionScale | None:
    """The scale applied between q k^T and this softmax, or None if its input is not a q k^T of two signals."""
    found = _walk_to_matmul(softmax.inputs[0])
    if found is None:
        return None
    matmul, constant = found
    q, k = matmul.inputs[0], matmul.inputs[1]
    d_k = q.shape[-1] if q is not None and q.shape and q.shape[-1] else None
    q_proj, q_factor = _projection(q)
    k_proj, k_factor = _projection(k)
    folded = 1.0
    if q_proj is not None and k_proj is not None:
        q_std, k_std = _weight_std(q_proj), _weight_std(k_proj)
        if q_std and k_std:
            folded = q_std / k_std
    return AttentionScale(matmul, d_k, constant * q_factor * k_factor, folded, q_proj, k_proj)


def _walk_to_matmul(value: Value | None) -> tuple[Node, float] | None:
    """Back from the logits through masks, biases and constant rescales to a matmul of two signals."""
    factor = 1.0
    for _ in range(_MAX_STEPS):
        producer = value.producer if value is not None else None
        if producer is None:
            return None
        if producer.op == "matmul" and sum(is_signal(v) for v in producer.inputs) == 2:
            return producer, factor
        if producer.op not in _PASSIVE:
            return None
        factor *= _constant_factor(producer)
        value = _logit_input(producer)
    return None


def _logit_input(node: Node) -> Value | None:
    """The signal input that carries the logits: with a position bias added (T5), the one that leads to q k^T."""
    signals = [v for v in node.inputs if is_signal(v)]
    if len(signals) <= 1:
        return signals[0] if signals else None
    return next((v for v in signals if _walk_to_matmul(v) is not None), signals[0])


def _projection(value: Value | None) -> tuple[Node | None, float]:
    """The weighted layer that produced q (or k), through reshapes and constant rescales, and their factor. RoPE
    (q cos + rotate(q) sin) keeps the norm: followed through its first branch."""
    factor = 1.0
    for _ in range(_MAX_STEPS):
        producer = value.producer if value is not None else None
        if producer is None:
            return None, factor
        if producer.op in ("linear", "conv", "matmul") and producer.params.get("weight") is not None:
            return producer, factor
        if producer.op not in _PASSIVE:
            return None, factor
        if producer.op in ("add", "sub") and sum(is_signal(v) for v in producer.inputs) == 2:
            value = next(v for v in producer.inputs if is_signal(v))  # rotary embedding: norm preserved
            continue
        if producer.op in ("mul", "div") and sum(is_signal(v) for v in producer.inputs) == 2:
            return None, factor
        factor *= _constant_factor(producer)
        signals = [v for v in producer.inputs if is_signal(v)]
        if len(signals) != 1:
            return None, factor
        value = signals[0]
    return None, factor


def _constant_factor(node: Node) -> float:
    """c if the node computes c * x of its signal input (a scalar Mul/Div or a linear pointwise program), else 1."""
    if node.op == "pointwise":
        fn = pointwise.as_function(node.attrs.get("program", ("x",)))
        y = fn(np.array([0.0, 1.0, 2.0, -1.5]))
        if np.all(np.isfinite(y)) and abs(y[0]) < 1e-12 and np.allclose(y, y[1] * np.array([0.0, 1.0, 2.0, -1.5])):
            return float(abs(y[1])) or 1.0
        return 1.0
    if node.op in ("mul", "div"):
        constants = [
            v.array
            for v in node.inputs
            if v is not None and not is_signal(v) and v.array is not None and v.array.size == 1
        ]
        if len(constants) == 1 and float(constants[0].reshape(())) != 0:
            c = abs(float(constants[0].reshape(())))
            if node.op == "mul":
                return c
            if node.inputs[-1] is constants[0]:  # x / c; c / x is not a rescale
                return 1 / c
    return 1.0


def _weight_std(node: Node) -> float | None:
    w = node.params.get("weight")
    return math.sqrt(w.w_sq) if w is not None and w.w_sq > 0 else None
