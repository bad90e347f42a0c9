"""The repairs checks attach to their findings: which stored weights `initcheck fix` multiplies, and by what.

A check states its repair where it states its fix, from the same numbers; the fix command only applies them."""

from __future__ import annotations

import math

from initcheck.ir import Node
from initcheck.report.model import LayerRow, Repair, Scale


def of_row(row: LayerRow, factor: float) -> Scale:
    return Scale(row.label, row.weight_tensor, factor, row.weight_std)


def of_node(node: Node, factor: float) -> Scale:
    weight = node.params.get("weight")
    std = math.sqrt(weight.w_sq) if weight is not None else None
    return Scale(node.label, node.attrs.get("weight_tensor"), factor, std)


def rescale(scales: list[Scale]) -> Repair:
    """Multiply these weights; unfixable where one of them has no stored tensor of its own, or where two layers
    would scale one shared tensor by different factors."""
    unnamed = [s.layer for s in scales if s.tensor is None]
    if unnamed:
        return Repair(unfixable=f"the stored tensor of '{unnamed[0]}' is not known (a weight computed in the graph)")
    factors: dict[str, set[float]] = {}
    for s in scales:
        factors.setdefault(s.tensor or "", set()).add(round(s.factor, 6))
    shared = next((t for t, f in factors.items() if len(f) > 1), None)
    if shared:
        return Repair(unfixable=f"layers that share the tensor '{shared}' would need different factors")
    unique = {s.tensor: s for s in scales}  # one tensor written by several layers (tied): scaled once
    return Repair(scales=tuple(unique.values()))


def unfixable(why: str) -> Repair:
    return Repair(unfixable=why)
