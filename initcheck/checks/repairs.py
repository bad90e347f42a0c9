"""The repairs checks attach to their findings: which stored tensors `initcheck fix` changes, and how.

A check states its repair where it states its fix, from the same numbers; the fix command only applies them."""

from __future__ import annotations

import math

from initcheck.ir import Node
from initcheck.report.model import Edit, LayerRow, Repair


def of_row(row: LayerRow, factor: float) -> Edit:
    return Edit(row.label, row.weight_tensor, factor, row.weight_std)


def of_node(node: Node, factor: float) -> Edit:
    weight = node.params.get("weight")
    std = math.sqrt(weight.w_sq) if weight is not None else None
    return Edit(node.label, node.attrs.get("weight_tensor"), factor, std)


def redraw(node: Node, std: float) -> Edit:
    """The weight drawn afresh from N(0, std^2)."""
    return Edit(node.label, node.attrs.get("weight_tensor"), how="normal", value=std)


def centered(node: Node) -> Edit:
    return Edit(node.label, node.attrs.get("weight_tensor"), how="center")


def filled(node: Node, tensor_attr: str, value: float) -> Edit:
    """Every entry of the node's bias (`bias_tensor`) or normalisation scale (`scale_tensor`) set to `value`."""
    return Edit(node.label, node.attrs.get(tensor_attr), how="fill", value=value)


def icnr(node: Node, block: int, channel_first: bool) -> Edit:
    """ICNR: one kernel per output channel, copied to the block's r^2 sub-pixel positions (in the shuffle's channel
    order: c r^2 + phase, or phase C + c for DepthToSpace DCR), drawn at the weight's own std."""
    weight = node.params.get("weight")
    std = math.sqrt(weight.w_sq) if weight is not None else None
    return Edit(
        node.label,
        node.attrs.get("weight_tensor"),
        std=std,
        how="icnr" if channel_first else "icnr_dcr",
        value=float(block),
    )


def recurrent(node: Node, factor: float) -> list[Edit]:
    """Each direction's W_hh (an ONNX R holds them all) multiplied by `factor`."""
    return [Edit(node.label, t, factor) for t in node.attrs.get("hidden_tensors") or [None]]


def change(edits: list[Edit]) -> Repair:
    """These edits; unfixable where one of them has no stored tensor of its own, or where two layers would change
    one shared tensor differently."""
    unnamed = [e.layer for e in edits if e.tensor is None]
    if unnamed:
        return Repair(unfixable=f"the stored tensor of '{unnamed[0]}' is not known (a weight computed in the graph)")
    ways: dict[str, set[tuple]] = {}
    for e in edits:
        ways.setdefault(e.tensor or "", set()).add((e.how, round(e.factor, 6), e.value))
    shared = next((t for t, w in ways.items() if len(w) > 1), None)
    if shared:
        return Repair(unfixable=f"layers that share the tensor '{shared}' would need different changes")
    unique = {e.tensor: e for e in edits}  # one tensor written by several layers (tied): changed once
    return Repair(edits=tuple(unique.values()))


def unfixable(why: str) -> Repair:
    return Repair(unfixable=why)
