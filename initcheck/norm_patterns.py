"""Normalisations written by hand become the canonical node they are.

Hugging Face decoders (Llama, Mistral, Qwen2, Gemma, Phi-3), T5 and Mamba write RMSNorm as
`x * rsqrt(mean(x^2, -1) + eps)`, and many codebases write LayerNorm as `(x - mean) / sqrt(var + eps)`. Left as
pieces, the analysis sees a reduction and a multiply of two signals: it cannot know that the output's scale is
reset, so it reports the norm as an explosion or a collapse and asks for "a normalisation layer" on a normalisation
layer. This pass runs after pointwise fusion (so `+ eps -> rsqrt`, `pow 2`, casts are single `pointwise` nodes,
whatever the frontend) and matches the data flow, checking each piece numerically (the square, the `(m + eps)^-1/2`
or `(m + eps)^1/2` map, the reduction over the last axis) rather than by op names."""

from __future__ import annotations

import numpy as np

from initcheck import pointwise
from initcheck.ir import Graph, Node, Value

_POINTS = np.array([0.25, 0.5, 1.0, 2.0, 4.0])


def recognize_normalizations(graph: Graph) -> None:
    """Replace the last node of each hand-written RMSNorm/LayerNorm by an `rms_norm`/`layer_norm` node; the
    pieces it no longer needs are dropped."""
    changed = False
    for i, node in enumerate(graph.nodes):
        replacement = _match(node)
        if replacement is not None:
            graph.nodes[i] = replacement
            changed = True
    if changed:
        from initcheck.passes import remove_dead

        graph.rewire()
        remove_dead(graph)


def _match(node: Node) -> Node | None:
    """x * r(mean(s)) or x / q(mean(s)) with s = x^2 (RMS) or s = (x - mean(x))^2 (LayerNorm)."""
    if node.op not in ("mul", "div") or len(node.inputs) != 2 or any(v is None for v in node.inputs):
        return None
    candidates = [(0, 1)] if node.op == "div" else [(0, 1), (1, 0)]
    for signal_at, scale_at in candidates:
        signal, scale = node.input(signal_at), node.input(scale_at)
        eps = _epsilon(scale, power=-0.5 if node.op == "mul" else 0.5)
        if eps is None:
            continue
        squared = _mean_over_last_axis(_through_pointwise(scale))
        if squared is None or not _is_square_of(squared, signal):
            continue
        centred = _centred(_strip_identity(signal))
        return (
            _normalization(node, "layer_norm", centred, eps)
            if centred is not None
            else _normalization(node, "rms_norm", _strip_identity(signal), eps)
        )
    return None


def _as_program(value: Value) -> tuple[Value, tuple]:
    """(root, program) with value = program(root): through a fused pointwise node, else the value itself."""
    producer = value.producer
    if producer is not None and producer.op == "pointwise":
        return producer.input(0), producer.attrs["program"]
    return value, ("x",)


def _is_square_of(squared: Value, signal: Value) -> bool:
    """squared = signal^2 elementwise: both pointwise functions of one root (or of equivalent roots, as two
    identical `x - mean` nodes), the first the square of the second (checked numerically)."""
    root_s, program_s = _as_program(squared)
    root_a, program_a = _as_program(signal)
    if not _equivalent(root_s, root_a):
        return False
    z = np.linspace(-3, 3, 13)
    with np.errstate(all="ignore"):
        return bool(
            np.allclose(
                pointwise.as_function(program_s)(z), pointwise.as_function(program_a)(z) ** 2, rtol=1e-6, atol=1e-9
            )
        )


def _equivalent(a: Value, b: Value) -> bool:
    """The same value, or the same op of the same inputs (a norm that computes `x - mean` twice)."""
    a, b = _strip_identity(a), _strip_identity(b)
    if a is b:
        return True
    pa, pb = a.producer, b.producer
    return (
        pa is not None
        and pb is not None
        and pa.op == pb.op
        and pa.op in ("sub", "pointwise")
        and len(pa.inputs) == len(pb.inputs)
        and all(x is y for x, y in zip(pa.inputs, pb.inputs))
        and pa.attrs.get("program") == pb.attrs.get("program")
    )


def _normalization(node: Node, op: str, x: Value, eps: float) -> Node:
    return Node(
        name=node.name,
        op=op,
        source_op=f"{node.source_op} (hand-written {op})",
        inputs=[x],
        outputs=list(node.outputs),
        attrs={"axis": -1, "epsilon": eps},
        params={},
        scope=node.scope,
    )


def _program(value: Value | None) -> tuple | None:
    producer = value.producer if value is not None else None
    if producer is None or producer.op != "pointwise":
        return None
    return producer.attrs.get("program")


def _epsilon(value: Value, power: float) -> float | None:
    """eps if value = (m + eps)^power of the reduced tensor m (within 1e-4), else None."""
    program = _program(value)
    if program is None:
        return None
    y = pointwise.as_function(program)(_POINTS)
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        return None
    eps = float(y[2] ** (1 / power) - 1.0)  # at m = 1
    if not 0 <= eps < 0.1:
        return None
    expected = (_POINTS + eps) ** power
    return eps if np.allclose(y, expected, rtol=1e-4) else None


def _through_pointwise(value: Value) -> Value | None:
    producer = value.producer
    return producer.inputs[0] if producer is not None and producer.op == "pointwise" else None


def _mean_over_last_axis(value: Value | None) -> Value | None:
    """The input of a keepdims mean over the last axis producing `value`."""
    producer = value.producer if value is not None else None
    if producer is None or producer.op != "reduce_mean" or not producer.attrs.get("keepdims", 1):
        return None
    axes = producer.attrs.get("axes")
    shape = producer.input(0).shape
    rank = len(shape) if shape is not None else None
    if axes is None or len(axes) != 1 or axes[0] not in (-1, (rank - 1) if rank else -1):
        return None
    return producer.inputs[0]


def _strip_identity(value: Value) -> Value:
    """Through casts and identity pointwise nodes (dtype round trips around a norm)."""
    while (
        value.producer is not None
        and value.producer.op == "pointwise"
        and value.producer.attrs.get("function") == "identity"
    ):
        value = value.producer.input(0)
    return value


def _centred(value: Value) -> Value | None:
    """x if value = x - mean(x, -1)."""
    producer = value.producer
    if producer is None or producer.op != "sub" or len(producer.inputs) != 2 or producer.inputs[1] is None:
        return None
    x, mean = _strip_identity(producer.input(0)), producer.inputs[1]
    source = _mean_over_last_axis(mean)
    return x if source is not None and _equivalent(source, x) else None
