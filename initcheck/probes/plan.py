"""How much of the model the probe runs, chosen before it runs so that it fits the device's memory.

A probe that runs out of memory loses the whole report, and one that refuses tells the user nothing. So the probe
shrinks what it runs until it fits, and says so: first the samples per run (where the model's batch dimension is
free: the runs per seed grow, the samples stay), then the blocks of its repeated stack (the first N blocks run;
their gradients start from the predicted gradient energy where the run stops). Only when even one block at one
sample does not fit does it refuse (IC403).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from initcheck.errors import UsageError
from initcheck.ir import Graph
from initcheck.options import ProbeOptions
from initcheck.report.model import LayerRow

BYTES = {"float64": 8, "float32": 4, "int64": 8, "int32": 4, "float16": 2, "bfloat16": 2, "bool": 1, "uint8": 1}
DEVICE_SHARE = 0.9  # of a GPU's free memory: the allocator's caching and the CUDA context need the rest
HOST_SHARE = 0.5  # of a machine's memory: the model itself and the symbolic results are already there


class ProbeTooLarge(Exception):
    """The probe would not fit even at one sample and one block (reported as IC403, not raised to the user)."""


@dataclass(frozen=True)
class ProbePlan:
    run_batch: int | None = None  # samples per run where the batch dimension is free (None: the model's own)
    cut: str | None = None  # the scope of the first block not run ("model.layers.4"); None: the whole model
    blocks: tuple[int, int] | None = None  # (blocks run, blocks in the stack) when cut
    gradients: dict[str, float] = field(default_factory=dict)  # predicted G of values live across the cut
    # the share of that G the same at every position of a sample (the pass's shared gradient, docs/theory.md §9):
    # the seed there carries it, or the attention values of the blocks run would sum queries' gradients that do
    # not co-vary as the model's do (a 1.1B Llama's first values 2.2x the prediction with an iid seed)
    shared: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Footprint:
    """What the probe holds: weights it copies to the device, and activations with their gradients per sample."""

    weights: int  # bytes the probe adds for weights (a device copy, a cast); 0 where it uses the model's own
    activations: list[int]  # bytes per graph node's outputs at the graph's own batch, in graph order
    graph_batch: int  # the batch the graph's shapes are at
    budget: int  # bytes the probe may use; 0: unknown, no limit


def plan_probe(
    graph: Graph,
    rows: list[LayerRow],
    options: ProbeOptions,
    footprint: Footprint,
    free_batch: bool,
    predicted_G: dict[str, float],
    can_cut: bool,
    predicted_shared: dict[str, float] | None = None,
) -> ProbePlan:
    """The largest probe that fits: the whole model at the requested batch if it can; else fewer samples per run
    (free_batch); else a prefix of the repeated stack (can_cut); else ProbeTooLarge. --probe-layers caps the prefix
    the user wants whatever fits."""
    stack = _largest_stack(rows)
    if options.layers is not None and not can_cut:
        raise UsageError("--probe-layers: only PyTorch models (live modules, .pt2) can be probed block by block")
    if options.layers is not None and stack is None:
        raise UsageError("--probe-layers: this model has no repeated stack of 4 or more blocks to cut")
    cuts = _cuts(graph, stack, options.layers)  # (blocks run, cut scope, node index) from the most run down
    requested = options.batch if free_batch else footprint.graph_batch
    for blocks, scope, end in cuts:
        for batch in _batches(requested, free_batch):
            if _fits(footprint, end, batch):
                plan = _plan(graph, stack, blocks, scope, batch, requested, free_batch, predicted_G, footprint)
                shared = predicted_shared or {}
                return replace(plan, shared={name: shared[name] for name in plan.gradients if name in shared})
    need = _need(footprint, len(footprint.activations), requested)
    advice = "lower --batch" if free_batch else "give smaller input shapes"
    if stack is not None and can_cut:
        advice += " or --probe-layers"
    raise ProbeTooLarge(
        f"it would hold ~{need / 2**30:.1f} GiB (weights, activations and gradients) at batch {requested}, more "
        f"than the {footprint.budget / 2**30:.1f} GiB it may use here; {advice}"
    )


def _plan(graph, stack, blocks, scope, batch, requested, free_batch, predicted_G, footprint) -> ProbePlan:
    notes = []
    if free_batch and batch < requested:
        notes.append(
            f"the probe ran {batch} sample(s) per run, not {requested}, to fit in "
            f"{footprint.budget / 2**30:.1f} GiB; more runs per seed keep the sample count"
        )
    if scope is None:
        return ProbePlan(run_batch=batch if free_batch else None, notes=tuple(notes))
    total = stack[-1] - stack[1] + 1
    notes.append(
        f"the probe ran the first {blocks} of {total} blocks of {stack[0]} (rows from {scope} on are not measured); "
        "their gradients start from the predicted gradient energy (and the share of it a sample's positions have in "
        "common) where the run stops"
    )
    live = _live_across(graph, scope)
    return ProbePlan(
        run_batch=batch if free_batch else None,
        cut=scope,
        blocks=(blocks, total),
        gradients={name: predicted_G[name] for name in live if name in predicted_G},
        notes=tuple(notes),
    )


def _largest_stack(rows: list[LayerRow]) -> tuple[str, int, int] | None:
    """(prefix, first, last) of the repeated stack with the most blocks."""
    from initcheck.analysis.blocks import repeated_blocks

    groups = repeated_blocks(rows)
    if not groups:
        return None
    best = max(groups, key=lambda g: g.last - g.first)
    return best.prefix, best.first, best.last


def _cuts(graph: Graph, stack, wanted: int | None) -> list[tuple[int, str | None, int]]:
    """Where the probe may stop, most blocks first: (blocks run, scope of the first block not run, its node index).
    The whole model is (total, None, every node)."""
    nodes = len(graph.nodes)
    if stack is None:
        return [(0, None, nodes)]
    prefix, first, last = stack
    total = last - first + 1
    most = total if wanted is None else min(wanted, total)
    cuts: list[tuple[int, str | None, int]] = [(total, None, nodes)] if most == total else []
    for blocks in range(min(most, total - 1), 0, -1):
        scope = f"{prefix}.{first + blocks}"
        cuts.append((blocks, scope, _first_node_in(graph, scope)))
    return cuts


def _first_node_in(graph: Graph, scope: str) -> int:
    for i, node in enumerate(graph.nodes):
        if in_scope(node.scope, scope):
            return i
    return len(graph.nodes)


def in_scope(scope: str, block: str) -> bool:
    return scope == block or scope.startswith(block + ".")


def _live_across(graph: Graph, scope: str) -> set[str]:
    """Values made before the cut and read at or after it: where the gradient of the run's prefix starts."""
    end = _first_node_in(graph, scope)
    made = {v.name for node in graph.nodes[:end] for v in node.outputs} | {v.name for v in graph.inputs}
    return {v.name for node in graph.nodes[end:] for v in node.inputs if v is not None and v.name in made}


def _batches(requested: int, free_batch: bool) -> list[int]:
    """Samples per run to try, largest first: halving from the requested batch where the batch is free."""
    if not free_batch:
        return [requested]
    out, b = [], requested
    while b >= 1:
        out.append(b)
        b //= 2
    if out[-1] != 1:
        out.append(1)
    return out


def _need(footprint: Footprint, end: int, batch: int) -> int:
    scale = batch / max(footprint.graph_batch, 1)
    return footprint.weights + int(sum(footprint.activations[:end]) * scale)


def _fits(footprint: Footprint, end: int, batch: int) -> bool:
    return not footprint.budget or _need(footprint, end, batch) <= footprint.budget


def activation_bytes(graph: Graph) -> list[int]:
    """Per node: its outputs' values and their gradients (autograd keeps what backward needs; the gradient
    flowing back is as large), at the graph's own batch."""
    out = []
    for node in graph.nodes:
        total = 0
        for v in node.outputs:
            if v.shape and v.const is None and v.array is None and not v.is_weight:
                total += (v.numel or 0) * BYTES.get(v.dtype, 4) * 2
        out.append(total)
    return out


def graph_batch(graph: Graph) -> int:
    shape = graph.inputs[0].shape if graph.inputs else None
    return int(shape[0]) if shape and shape[0] else 1


def budget_bytes(device: str) -> int:
    """Bytes the probe may use on this device: a share of the GPU's free memory, or of the machine's memory."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free * DEVICE_SHARE)
    return int(_host_bytes() * HOST_SHARE)


def _host_bytes() -> int:
    try:
        import os

        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: no estimate, no limit
        return 0
