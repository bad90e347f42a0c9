"""Which values are table rows, and the per-row numbers (docs/theory.md §13)."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import lru_cache

import numpy as np

from initcheck import pointwise
from initcheck.analysis.symbolic import SymbolicResult
from initcheck.codes import limit
from initcheck.gaussian import moments_of
from initcheck.ir import Graph, Node, Value
from initcheck.passes import is_signal
from initcheck.report.model import LayerRow
from initcheck.rules.common import NORMALIZATIONS, normalizes

WEIGHTED = {"linear", "conv", "conv_transpose", "matmul", "embedding", "rnn", "lstm", "gru"}
NORMS = NORMALIZATIONS
RESOLUTION = {
    "max_pool",
    "avg_pool",
    "global_avg_pool",
    "global_max_pool",
    "resize",
    "depth_to_space",
    "space_to_depth",
}
MERGES = {"add", "sub", "sum", "concat", "mul", "div", "matmul"}
OWN_ROW = WEIGHTED | NORMS | RESOLUTION | {"softmax", "log_softmax", "dropout", "unsupported", "prelu"}
AVERAGING = {"global_avg_pool", "avg_pool", "reduce_mean"}
# forward gains are measured from these outputs: averaging shrinks the incoherent part by the window by design
REFERENCE_OPS = NORMS | AVERAGING | {"embedding", "softmax", "log_softmax"}
BACKWARD_REFERENCE_OPS = NORMS | AVERAGING | {"softmax", "log_softmax"}  # backward gains are measured from these inputs


def signal_inputs(node: Node) -> list[Value]:
    return [v for v in node.inputs if is_signal(v)]


def _is_row_node(node: Node) -> bool:
    if node.op in OWN_ROW:
        return True
    return node.op in MERGES and len(signal_inputs(node)) >= 2


def _folds_into_previous(node: Node) -> bool:
    """Activations and affine constants right after a row node share its row."""
    inputs = signal_inputs(node)
    if len(inputs) != 1 or node.op not in {"pointwise", "add", "sub", "mul", "div", "prelu"} | {"dropout"}:
        return False
    source = inputs[0]
    return source.producer is not None and len(source.consumers) == 1 and not source.is_output


def select_rows(graph: Graph, result: SymbolicResult, all_nodes: bool) -> list[tuple[Node, Node]]:
    """(first node, last node) of each row, in graph order."""
    rows: list[list[Node]] = []
    row_of: dict[int, int] = {}
    for node in graph.nodes:
        if not any(v in result.forward for v in node.outputs):
            continue
        if not all_nodes and _folds_into_previous(node) and node.op != "dropout":
            src = signal_inputs(node)[0].producer
            if id(src) in row_of:
                rows[row_of[id(src)]].append(node)
                row_of[id(node)] = row_of[id(src)]
                continue
        if all_nodes or _is_row_node(node) or any(v.is_output for v in node.outputs):
            row_of[id(node)] = len(rows)
            rows.append([node])
        elif node.op == "pointwise" and node.attrs.get("function") != "identity":
            row_of[id(node)] = len(rows)
            rows.append([node])
    return [(r[0], r[-1]) for r in rows]


def reference_moments(graph: Graph, result: SymbolicResult) -> dict[Value, float]:
    """K_ref per value: the nearest upstream normalisation/embedding output, else the input's K;
    through merges, the dominant (largest-K) input's reference."""
    ref: dict[Value, float] = {v: m.K for v, m in result.forward.items() if v.producer is None}
    for node in graph.nodes:
        for out in node.outputs:
            if out not in result.forward:
                continue
            if node.op in REFERENCE_OPS and (node.op not in NORMS or normalizes(node)):
                ref[out] = result.forward[out].K
                continue
            ins = [v for v in node.inputs if v in result.forward]
            if not ins:
                ref[out] = result.forward[out].K
                continue
            dominant = max(ins, key=lambda v: result.forward[v].K)
            ref[out] = ref.get(dominant, result.forward[dominant].K)
    return ref


SMALL_HEAD_LOG10 = -0.25  # an output region whose own gain is below x0.56 in K
MAX_HEAD_LAYERS = 3  # a classifier MLP after the last pooling or normalisation (VGG, MobileNetV3) counts as the head

Region = tuple[list[Node], Value | None]  # (nodes from the head back to the region's start, the value entering it)


def small_heads(regions: list[Region], result: SymbolicResult) -> set[Node]:
    """The nodes of output regions that start small by themselves. An output region is what lies between an
    output and the last normalisation, pooling or embedding before it: the logit layer (lm_head, fc) or a short
    classifier MLP (VGG's, MobileNetV3's), with the weightless ops among them (dropout, T5's d^-1/2 rescale before
    its tied head). Small by design in most stock models (zero-initialised heads, N(0, 0.01)/N(0, 0.02)
    classifiers and unembeddings: the loss starts near ln(classes)); its gain is K_out over K at its start."""
    found: set[Node] = set()
    for region, start in regions:
        out = next((v for v in region[0].outputs if v in result.forward), None)
        if out is None or start is None or start not in result.forward or result.forward[start].K <= 0:
            continue
        if result.forward[out].K / result.forward[start].K < 10**SMALL_HEAD_LOG10:
            found.update(region)
    return found


def lead_ins(regions: list[Region]) -> set[Node]:
    """Every node of an output region but its last weighted layer: judged together with that layer."""
    return {n for region, _ in regions for n in region[1:]}


def output_regions(graph: Graph) -> list[Region]:
    """One region per last weighted layer before an output."""
    return [_region(head) for head in output_heads(graph)]


def _region(head: Node) -> Region:
    """Back from the head through single-input ops to a normalisation, pooling or embedding, taking at most
    MAX_HEAD_LAYERS weighted layers; where none is met (a plain MLP), the head and its weightless lead-in only."""
    chain, weighted = [head], 1
    while True:
        inputs = signal_inputs(chain[-1])
        value = inputs[0] if len(inputs) == 1 else None
        producer = value.producer if value is not None else None
        if producer is not None and producer.op in REFERENCE_OPS and (producer.op not in NORMS or normalizes(producer)):
            return chain, value
        if producer is None or value is None or len(signal_inputs(producer)) != 1 or len(value.consumers) != 1:
            return _weightless_lead_in(chain)
        if producer.op in WEIGHTED:
            weighted += 1
            if weighted > MAX_HEAD_LAYERS or producer.op not in ("linear", "conv", "matmul"):
                return _weightless_lead_in(chain)
        chain.append(producer)


def _weightless_lead_in(chain: list[Node]) -> Region:
    """The head and the weightless ops right before it, and the value entering them."""
    kept = [chain[0]]
    for node in chain[1:]:
        if node.params.get("weight") is not None or node.op in WEIGHTED:
            break
        kept.append(node)
    inputs = signal_inputs(kept[-1])
    return kept, inputs[0] if len(inputs) == 1 else None


def output_heads(graph: Graph) -> set[Node]:
    """The last weighted layer before each output, reached from the output through ops that carry no weight
    and do not normalise."""
    heads: set[Node] = set()
    seen: set[int] = set()
    stack = list(graph.outputs)
    while stack:
        v = stack.pop()
        node = v.producer
        if node is None or id(node) in seen or normalizes(node):
            continue
        seen.add(id(node))
        if node.op in WEIGHTED and node.params.get("weight") is not None and node.op != "embedding":
            heads.add(node)
            continue
        stack.extend(i for i in node.inputs if is_signal(i))
    return heads


def normalized_downstream(graph: Graph) -> set[Value]:
    """Values every path from which to an output passes through a normalisation: their scale only
    matters through epsilon and the normalisation's backward 1/v (docs/theory.md §13)."""
    covered: set[Value] = set()
    for node in reversed(graph.nodes):
        for v in node.outputs:
            if v.is_output or not v.consumers:
                continue
            if all(normalizes(c) or any(o in covered for o in c.outputs) for c in v.consumers):
                covered.add(v)
    for v in graph.inputs:
        if v.consumers and all(normalizes(c) or any(o in covered for o in c.outputs) for c in v.consumers):
            covered.add(v)
    return covered


@lru_cache(maxsize=256)
def forward_gain(program) -> float:
    """g_f = <phi^2>_1^{-1/2}: the weight gain that keeps K = 1 through linear -> phi (docs/theory.md §4)."""
    _, second, _, _ = moments_of(pointwise.as_function(program), 0.0, 1.0, 0.0, pointwise.kinks(program))
    return 1.0 / math.sqrt(second) if second > 0 else 1.0


def _log10(x: float | None) -> float | None:
    if x is None or not np.isfinite(x) or x <= 0:
        return None if x is None or not np.isfinite(x) else -math.inf
    return math.log10(x)


def build_rows(graph: Graph, result: SymbolicResult, all_nodes: bool = False) -> list[LayerRow]:
    refs = reference_moments(graph, result)
    regions = output_regions(graph)
    heads = small_heads(regions, result)
    before_heads = lead_ins(regions)
    tables = {
        n.attrs["weight_source"]: n.label for n in graph.nodes if n.op == "embedding" and n.attrs.get("weight_source")
    }
    grad_refs = backward_references(graph, result, heads)
    normalized = normalized_downstream(graph)
    rows = []
    for index, (first, last) in enumerate(select_rows(graph, result, all_nodes)):
        out = next(v for v in last.outputs if v in result.forward)
        fwd = result.forward[out]
        ins = [v for v in first.inputs if v in result.forward]
        k_in = result.forward[ins[0]].K if ins else None
        weight = first.params.get("weight")
        activation = last.attrs.get("function") if last is not first and last.op == "pointwise" else None
        if activation is None and last is not first and last.op == "prelu":
            activation = "prelu"
        target = None
        if weight is not None and weight.fan_in:
            program = last.attrs["program"] if last.op == "pointwise" and last is not first else ("x",)
            target = forward_gain(program) / math.sqrt(weight.fan_in)
        grad = result.backward.get(out)
        symbolic = result.estimate(out)
        assert symbolic is not None  # `out` was chosen among the predicted values
        rows.append(
            LayerRow(
                index=index,
                node=last.name,
                value=out.name,
                scope=first.scope or last.scope,
                op=first.op + (f"+{activation}" if activation else ""),
                source_op=first.source_op,
                shape=list(out.shape) if out.shape is not None else None,
                fan_in=weight.fan_in if weight is not None else None,
                fan_out=weight.fan_out if weight is not None else None,
                weight_std=math.sqrt(weight.w_sq) if weight is not None else None,
                target_std=target,
                activation=activation or (first.attrs.get("function") if first.op == "pointwise" else None),
                symbolic=symbolic,
                spread=math.sqrt(fwd.spread) if fwd.spread > 0 else 0.0,
                uninformative=symbolic.K_bar >= math.log(limit("IC401", "uninformative")),
                coherent=fwd.M,
                gain_log10=_log10(fwd.K / k_in) if k_in else None,
                forward_log10=_log10(fwd.K / refs[out]) if refs.get(out) else None,
                backward_log10=_log10(grad * out.numel / grad_refs[out])
                if grad and out.numel and grad_refs.get(out)
                else None,
                status=_row_status(first, last, result),
                normalized_downstream=out in normalized,
                small_head=first in heads and first not in before_heads,
                lead_in=first in before_heads or last in before_heads,  # the row reports its last node's value
                tied_with=tables.get(first.attrs.get("weight_source")) if first.op != "embedding" else None,
                weight_tensor=first.attrs.get("weight_tensor"),
                phases=_phase_grid(fwd.phases, first.attrs.get("strides")),
                phase_ratio=(max(fwd.phases) / min(fwd.phases) if min(fwd.phases) > 0 else math.inf)
                if fwd.phases
                else None,
            )
        )
    return with_gradient_spread(rows)


def from_the_outputs_back(bars: list[float]) -> list[float]:
    """A gradient's bar at each row from the forward bars (rows in graph order): it builds up from the outputs
    back, so a row's is what the layers after it add, sqrt(largest bar at or after it^2 - its own^2) (§12)."""
    deepest, out = 0.0, []
    for bar in reversed(bars):
        deepest = max(deepest, bar)
        out.append(math.sqrt(max(deepest**2 - bar**2, 0.0)))
    return out[::-1]


def with_gradient_spread(rows: list[LayerRow]) -> list[LayerRow]:
    """Each row's G bar with the finite-width spread of its gradient."""
    spreads = from_the_outputs_back([row.spread for row in rows])
    return [
        replace(row, symbolic=replace(row.symbolic, G_bar=math.hypot(row.symbolic.G_bar, spread)))
        for row, spread in zip(rows, spreads)
    ]


def _phase_grid(phases, strides) -> list[list[float]] | None:
    """Per-phase K as the stride grid (phase r = i s_w + j), for 2-D up-sampling."""
    if not phases or not strides or len(strides) != 2 or strides[0] * strides[1] != len(phases):
        return None
    width = int(strides[1])
    return [[float(p) for p in phases[i : i + width]] for i in range(0, len(phases), width)]


def backward_references(graph: Graph, result: SymbolicResult, heads: set[Node] | None = None) -> dict[Value, float]:
    """E_ref per value, E = G * numel (gradient energy per sample). At criticality E is preserved through
    width changes, strided convs, max pooling and nearest up-sampling (it is the product of chi_perp,
    docs/theory.md §4); averaging ops (pooling, attention's P @ V) and normalisations change it by design, so, like
    the forward reference, the backward reference is the nearest downstream output, normalisation or averaging
    input. A small output head's input is a reference too: a deliberately small head scales every gradient into
    the body by the same factor, which adaptive optimisers undo per tensor; the body is judged on what it does to
    the gradient that enters it (the head's own factor is reported with its forward finding)."""
    heads = heads or set()

    def energy(v: Value) -> float | None:
        g = result.backward.get(v)
        return g * v.numel if g is not None and v.numel else None

    def averages(c: Node) -> bool:
        """Attention's P @ V averages over tokens (P's rows sum to one): like pooling, it changes E by design."""
        first = result.forward.get(c.inputs[0]) if c.op == "matmul" and c.inputs and c.inputs[0] is not None else None
        return first is not None and first.simplex

    ref: dict[Value, float] = {}
    for output in graph.outputs:
        if e := energy(output):
            ref[output] = e
    for node in reversed(graph.nodes):
        for v in node.inputs:
            e = energy(v) if v is not None else None
            if v is None or e is None or v in ref:
                continue
            if any(
                (c.op in BACKWARD_REFERENCE_OPS and (c.op not in NORMS or normalizes(c))) or averages(c) or c in heads
                for c in v.consumers
            ):
                ref[v] = e
                continue
            downstream = [(energy(o), ref[o]) for c in v.consumers for o in c.outputs if o in ref and energy(o)]
            if downstream:
                ref[v] = max(downstream)[1]
    return ref


def _row_status(first: Node, last: Node, result: SymbolicResult) -> str:
    statuses = {result.status.get(first, "modeled"), result.status.get(last, "modeled")}
    for s in ("unsupported", "approximated"):
        if s in statuses:
            return s
    return "modeled"


def depth_and_width(graph: Graph) -> tuple[int, int | None]:
    """Depth: weighted layers on the longest input-to-output path; width: median hidden width."""
    depth: dict[Value, int] = {}
    for node in graph.nodes:
        here = max((depth.get(v, 0) for v in node.inputs if v is not None), default=0)
        here += 1 if node.op in WEIGHTED and node.op != "matmul" else 0
        for v in node.outputs:
            depth[v] = here
    total = max((depth.get(v, 0) for v in graph.outputs), default=0)
    widths = []
    for node in graph.nodes:
        w = node.params.get("weight")
        if w is not None and node.op in ("linear", "conv", "conv_transpose"):
            taps = int(np.prod(node.attrs.get("kernel", [1])))
            widths.append(w.fan_out // taps * node.attrs.get("groups", 1) if node.op == "conv" else w.fan_out)
    hidden = widths[:-1] or widths
    return total, int(np.median(hidden)) if hidden else None


_WEIGHTED = {"linear", "conv", "conv_transpose", "matmul"}


def _hidden_spread(value: Value, result: SymbolicResult) -> tuple[float, Value]:
    """Spread of the last hidden representation: the input of the final weighted layer, so that an output
    layer with few units (whose own averaging adds 2/C_out) does not count as depth."""
    v = value
    for _ in range(64):
        producer = v.producer
        if producer is None:
            break
        inputs = [i for i in producer.inputs if i is not None and i in result.forward]
        if producer.op in _WEIGHTED and inputs:
            return result.forward[inputs[0]].spread, inputs[0]
        if not inputs:
            break
        v = inputs[0]
    return (result.forward[value].spread if value in result.forward else 0.0), value


def output_spread(graph: Graph, result: SymbolicResult) -> tuple[float, Value, Value] | None:
    """(CV^2, hidden value, output) for the output whose last hidden representation varies most between
    initialisations (docs/theory.md §12)."""
    spreads = [(*_hidden_spread(v, result), v) for v in graph.outputs if v in result.forward]
    return max(spreads, key=lambda s: s[0]) if spreads else None


def width_regime(cv2: float) -> str:
    """docs/theory.md §12 classes: < 0.1 near-infinite-width, 0.1-0.5 effectively deep, then the IC505 thresholds."""
    from initcheck.codes import limit

    if cv2 >= limit("IC505", "overly_deep"):
        return "overly deep"
    if cv2 >= limit("IC505", "warning"):
        return "deep for its width"
    return "effectively deep" if cv2 >= 0.1 else "near-infinite-width"
