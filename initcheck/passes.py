"""Frontend-independent rewrites of the IR before analysis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeGuard

from initcheck import pointwise
from initcheck.ir import Graph, Node, Value

_FUSIBLE_BINARY = {"add", "sub", "mul", "div", "pow", "max", "min"}


def is_signal(value: Value | None) -> TypeGuard[Value]:
    return value is not None and (value.producer is not None or (value.is_input and value.is_float))


# ops that carry one signal through without weights of their own (activations, rescales, dropout, views)
WEIGHTLESS = {
    "pointwise",
    "dropout",
    "drop_path",
    "reshape",
    "transpose",
    "cast",
    "identity",
    "squeeze",
    "unsqueeze",
    "flatten",
}


def trace_back(value: Value, through: set[str] = WEIGHTLESS, steps: int = 8) -> Value:
    """The value reached going upstream from `value` through single-signal-input ops in `through`."""
    for _ in range(steps):
        producer = value.producer
        signals = [v for v in producer.inputs if is_signal(v)] if producer is not None else []
        if producer is None or producer.op not in through or len(signals) != 1:
            break
        value = signals[0]
    return value


def _scalar(value: Value | None) -> float | None:
    if value is None or value.array is None or value.array.size != 1 or value.array.dtype.kind not in "fiu":
        return None
    return float(value.array.reshape(()))


def _program_for(node: Node, roots: dict) -> tuple[Value, tuple] | None:
    """(root, program) if the node's output is an elementwise function of a single root tensor."""

    def expr(v):
        return roots.get(v, (v, ("x",)))

    if node.op in pointwise.UNARY or node.op == "cast":
        if len(node.outputs) != 1 or not is_signal(node.inputs[0]):
            return None
        root, e = expr(node.inputs[0])
        name = "identity" if node.op == "cast" else node.op
        attrs = {} if node.op == "cast" else node.attrs
        return root, (name, tuple(sorted(attrs.items())), e)
    if node.op in _FUSIBLE_BINARY and len(node.inputs) == 2:
        root, args = None, []
        for v in node.inputs:
            if is_signal(v):
                r, e = expr(v)
                if root is not None and r is not root:
                    return None
                root = r
                args.append(e)
            elif _scalar(v) is not None:
                args.append(("const", _scalar(v)))
            else:
                return None
        return (root, (node.op, (), *args)) if root is not None else None
    return None


def _only_part(node: Node) -> Value | None:
    """The one input of a concatenation whose other parts are empty along its axis; None elsewhere."""
    shape = node.outputs[0].shape if node.op == "concat" and len(node.outputs) == 1 else None
    shapes = [v.shape for v in node.inputs if v is not None]
    if shape is None or any(s is None or len(s) != len(shape) for s in shapes):
        return None
    axis = node.attrs.get("axis", 0) % len(shape)
    full = [v for v in node.inputs if v is not None and v.shape is not None and v.shape[axis] != 0]
    if len(full) != 1 or full[0].shape != shape or not is_signal(full[0]):
        return None
    return full[0]


def _is_identity(program: tuple) -> bool:
    return program == ("x",) or (program[0] == "identity" and _is_identity(program[2]))


def fuse_pointwise(graph: Graph) -> None:
    """Replace every chain of elementwise ops of one root tensor by one `pointwise` node per output
    that is still needed (exported GELU/SiLU/Mish decompositions become single, exact nodes)."""
    roots: dict[Value, tuple[Value, tuple]] = {}
    same: dict[Value, Value] = {}  # outputs of float casts and copies: the value they copy
    fused: list[Node] = []
    for node in graph.nodes:
        node.inputs = [same.get(v, v) if v is not None else None for v in node.inputs]
        copied = _only_part(node)
        if copied is not None and not node.outputs[0].is_output:
            # Phi-3 concatenates its rotated features with an empty unrotated rest: a copy, which must not hide
            # the rotation from the attention rules that read through views to it
            same[node.outputs[0]] = copied
            continue
        found = _program_for(node, roots)
        if found is None:
            fused.append(node)
            continue
        root, program = found
        out = node.outputs[0]
        if _is_identity(program) and out.is_float and not out.is_output:
            # x.to(float32), x.clone(): one value, so a residual block's skip and its norm's input are the same
            # tensor on every route (an ONNX exporter folds such casts, torch.export keeps them)
            same[out] = root
            continue
        roots[out] = (root, program)
        fused.append(
            Node(
                name=node.name,
                op="pointwise",
                source_op=node.source_op,
                inputs=[root],
                outputs=[out],
                attrs={"program": program, "function": pointwise.recognize(program)},
                scope=node.scope,
            )
        )
    graph.nodes = fused
    graph.rewire()
    remove_dead(graph)


def remove_dead(graph: Graph) -> None:
    """Drop nodes none of whose outputs is used or is a graph output."""
    needed: set[int] = set()
    live = []
    for node in reversed(graph.nodes):
        if any(v.is_output or id(v) in needed for v in node.outputs):
            live.append(node)
            needed.update(id(v) for v in node.inputs if v is not None)
    graph.nodes = live[::-1]
    graph.rewire()


def upstream(start: Value, limit: int = 400) -> Iterator[Value]:
    """`start` and the signal values it derives from, walking back through producers (bounded: at most `limit`
    values with a producer are expanded)."""
    seen: set[int] = set()
    stack = [start]
    while stack and len(seen) < limit:
        v = stack.pop()
        if id(v) in seen:
            continue
        yield v
        if v.producer is not None:
            seen.add(id(v))
            stack.extend(i for i in v.producer.inputs if i is not None and is_signal(i))


def reaches(start: Value, target: Value, limit: int = 400) -> bool:
    """Is `target` an ancestor of `start` (a bounded walk back through producers)?"""
    return any(v is target for v in upstream(start, limit))
