"""Mean-field susceptibilities per activation layer (docs/theory.md §4): chi_perp = C_W <phi'^2>_K (the gradient
factor of one layer, and the stability of nearby inputs' correlation) and chi_par = C_W d<phi^2>/dK (the
contraction of K toward its fixed point), with C_W = fan_in E[W^2] of the weighted layer the activation feeds.

Only activations inside plain chains count: activation -> weighted layer -> activation (or output), with
nothing but re-arrangements and dropout between. A normalisation or a residual merge in between changes
what the gradient and the correlations do, and the chain's susceptibility would mean nothing there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from initcheck import pointwise
from initcheck.analysis.symbolic import SymbolicResult
from initcheck.gaussian import expect
from initcheck.ir import Graph, Node, Value
from initcheck.report.model import LayerRow
from initcheck.rules.activations import program_moments

_PASS = {"reshape", "flatten", "transpose", "squeeze", "unsqueeze", "identity", "cast", "dropout"}
_WEIGHTED = {"linear", "conv"}
# (C_b, C_W) at criticality (docs/theory.md §4); None where no critical point exists
CRITICAL = {
    "relu": (0.0, 2.0),
    "identity": (0.0, 1.0),
    "tanh": (0.0, 1.0),
    "gelu": (0.173, 1.983),
    "gelu_tanh": (0.173, 1.983),
    "silu": (0.555, 1.988),
    "mish": (0.095, 2.014),
    "hard_swish": (0.507, 1.973),
    "sigmoid": None,
    "softplus": None,
    "elu": None,
    "selu": None,
}


@dataclass(frozen=True)
class Susceptibility:
    activation: str
    weighted: Node  # the layer the activation feeds, whose C_W enters
    preactivation: Value  # the activation's input
    K: float  # its second moment
    C_W: float
    C_b: float
    chi_perp: float
    chi_par: float
    C_W_critical: float  # 1 / <phi'^2>_K: the C_W that gives chi_perp = 1 at this K


def through(value: Value) -> Value:
    """Follow a value through single-consumer re-arrangements."""
    while len(value.consumers) == 1 and value.consumers[0].op in _PASS:
        value = value.consumers[0].outputs[0]
    return value


def _feeds(value: Value) -> Node | None:
    value = through(value)
    if len(value.consumers) == 1 and value.consumers[0].op in _WEIGHTED:
        return value.consumers[0]
    return None


def _continues(layer: Node) -> bool:
    """The weighted layer's output reaches another activation unchanged (a read-out layer into the output is not
    part of the chain: its fan-out differs by design)."""
    out = through(layer.outputs[0])
    return len(out.consumers) == 1 and out.consumers[0].op == "pointwise"


def susceptibilities(graph: Graph, result: SymbolicResult) -> dict[Node, Susceptibility]:
    found = {}
    for node in graph.nodes:
        x = result.forward.get(node.input(0)) if node.op == "pointwise" and node.inputs else None
        name = node.attrs.get("function", "pointwise")
        layer = _feeds(node.outputs[0]) if x is not None and name != "identity" else None
        weights = layer.params.get("weight") if layer is not None else None
        if layer is None or x is None or weights is None or not _continues(layer) or x.var <= 0:
            continue
        program = node.attrs["program"]
        _, _, _, slope_sq = program_moments(program, x)
        c_w = weights.gain
        found[node] = Susceptibility(
            name,
            layer,
            node.input(0),
            x.K,
            c_w,
            weights.bias_sq,
            c_w * slope_sq,
            c_w * _energy_slope(program, x.m, x.var),
            1 / slope_sq if slope_sq > 0 else float("inf"),
        )
    return found


def _energy_slope(program, mean: float, var: float, h: float = 1e-3) -> float:
    """d<phi^2>/dK at fixed mean (central difference in the variance)."""
    fn = pointwise.as_function(program)
    kinks = pointwise.kinks(program)
    up, down = (expect(lambda z: fn(z) ** 2, mean, var * (1 + s * h), kinks) for s in (1, -1))
    return (up - down) / (2 * h * var)


def with_susceptibilities(rows: list[LayerRow], found: dict[Node, Susceptibility]) -> list[LayerRow]:
    """New rows with chi_perp / chi_par on the row whose value is the activation's output (activations fold into
    their layer)."""
    by_value = {node.outputs[0].name: s for node, s in found.items()}
    return [
        replace(row, chi_perp=s.chi_perp, chi_par=s.chi_par) if (s := by_value.get(row.value)) is not None else row
        for row in rows
    ]
