"""Merge checks (docs/theory.md §5): N parallel branches summed without scaling (IC508), and the fan-in shift of a
convolution that consumes a concatenation, as in U-Net skips (IC509)."""

from __future__ import annotations

import math

from initcheck.analysis.layers import normalized_downstream
from initcheck.analysis.symbolic import SymbolicResult
from initcheck.checks import repairs
from initcheck.checks.registry import CheckContext, check
from initcheck.checks.residual import residual_blocks, stream_value
from initcheck.codes import limit
from initcheck.ir import Graph, Node, Value
from initcheck.passes import is_signal, trace_back
from initcheck.report.model import Finding, Measure

_SUMS = ("add", "sum")


def _terms(node: Node) -> list[Value]:
    """Leaves of an add tree: a + b + c exports as Add(Add(a, b), c); an inner sum used only here is unfolded."""
    terms = []
    for v in node.inputs:
        if not is_signal(v):
            continue
        inner = v.producer
        if inner is not None and inner.op in _SUMS and len(v.consumers) == 1:
            terms += _terms(inner)
        else:
            terms.append(v)
    return terms


def _ancestors(value: Value, limit: int = 2000) -> set[Value]:
    seen: set[Value] = set()
    stack = [value]
    while stack and len(seen) < limit:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        if v.producer is not None:
            stack.extend(i for i in v.producer.inputs if is_signal(i))
    return seen


def branch_point(terms: list[Value], order: dict[Node, int]) -> Value | None:
    """The nearest value every branch descends from (the fork of an Inception-style block)."""
    common = set.intersection(*(_ancestors(t) for t in terms))
    if not common:
        return None
    return max(common, key=lambda v: order.get(v.producer, -1) if v.producer is not None else -1)


def branch_sum_findings(graph: Graph, result: SymbolicResult) -> list[Finding]:
    """N >= 3 parallel branches of a common input summed: K_y = sum_i K_i, the block gain is sum_i g_i (≈ N for
    balanced branches); the fix 1/sqrt(sum g_i) (1/sqrt(N) balanced) scales the gradient into every branch alike."""
    residual_adds = {n for n, _, _ in residual_blocks(graph)}
    order = {n: i for i, n in enumerate(graph.nodes)}
    normalized = normalized_downstream(graph)
    findings = []
    for node in graph.nodes:
        if node.op not in _SUMS or node in residual_adds or _absorbed(node):
            continue
        terms = _terms(node)
        out = result.forward.get(stream_value(node))
        found = [result.forward.get(t) for t in terms]
        parts = [p for p in found if p is not None and p.K > 0]
        if len(terms) < limit("IC508", "branches") or out is None or len(parts) < len(found):
            continue
        if any(a in _ancestors(b) for a in terms for b in terms if a is not b):
            continue  # a residual with several branches: IC502's business
        fork = branch_point(terms, order)
        reference = result.forward[fork].K if fork is not None and fork in result.forward else None
        mean_branch = sum(p.K for p in parts) / len(parts)
        merge_gain = out.K / mean_branch
        block_gain = out.K / reference if reference else merge_gain
        if merge_gain < limit("IC508", "growth") or block_gain < limit("IC508", "growth"):
            continue
        gains = ", ".join(f"{p.K / reference:.3g}" for p in parts) if reference else ""
        scale = 1 / math.sqrt(block_gain)
        # summed embeddings (word + position + type) read through a LayerNorm: only its epsilon sees the scale
        reset = stream_value(node) in normalized
        findings.append(
            Finding(
                "IC508",
                "info" if reset else "warning",
                "branches",
                f"'{node.label}' sums {len(terms)} parallel branches"
                + (
                    f" of '{fork.producer.label if fork.producer else fork.name}' (branch gains {gains})"
                    if reference and fork is not None
                    else ""
                )
                + f": K grows x{block_gain:.3g} across the block (x{merge_gain:.3g} at the sum itself; sum of the branch "
                f"gains, ~N = {len(terms)} for balanced branches), and every branch receives the full gradient of the sum"
                + ("; every path from it meets a normalisation, which resets the scale" if reset else ""),
                node.name,
                node.scope,
                block_gain,
                limit("IC508", "growth"),
                f"scale the sum by {scale:.3g} (= 1/sqrt(sum of branch gains); 1/sqrt(N) = {1 / math.sqrt(len(terms)):.3g} "
                "for balanced branches) or each branch by its own gain; this scales forward K and the gradient into every "
                "branch by the same factor^2, in training and eval mode alike",
                scale,
                details={"branches": len(terms), "merge_gain": merge_gain},
                repair=_branch_ends(terms, [scale] * len(terms)),
                measure=Measure("K_ratio", (stream_value(node).name, fork.name if fork is not None else "")),
            )
        )
    return findings


def _branch_ends(values: list[Value], factors: list[float]):
    """Each value's weighted producer scaled by its factor (those at 1 left alone)."""
    edits = []
    for value, factor in zip(values, factors):
        if math.isclose(factor, 1.0):
            continue
        producer = trace_back(value).producer
        if producer is None or producer.params.get("weight") is None:
            return repairs.unfixable(f"'{value.name}' comes from no weighted layer that could carry the scale")
        edits.append(repairs.of_node(producer, factor))
    return repairs.change(edits)


def _absorbed(node: Node) -> bool:
    """An inner add of a larger sum (reported once, at the outermost add)."""
    out = node.outputs[0]
    return len(out.consumers) == 1 and out.consumers[0].op in _SUMS


def _concat_input(node: Node) -> Node | None:
    value = node.inputs[0] if node.inputs else None
    for _ in range(3):  # through a pad or an identity-like op
        producer = value.producer if value is not None else None
        if producer is None:
            return None
        if producer.op == "concat":
            return producer if sum(1 for v in producer.inputs if is_signal(v)) >= 2 else None
        if producer.op not in ("pad", "identity"):
            return None
        value = producer.inputs[0]
    return None


def concat_findings(graph: Graph, result: SymbolicResult) -> list[Finding]:
    """conv(concat(a, b)): forward gain fan_in E[W^2] and backward gain (C_out k^2 / s^2) E[W^2] per element
    differ when the merge changes the fan-in (Glorot recomputed for 2c -> c: 4/3 and 2/3, docs/theory.md §5);
    parts of very different K let one side drown the other."""
    gain, imbalance_limit = math.log(limit("IC509", "gain")), limit("IC509", "imbalance")
    findings = []
    for node in graph.nodes:
        concat = _concat_input(node) if node.op in ("conv", "linear") else None
        x, y = node.inputs[0], node.outputs[0]
        if concat is None or x not in result.forward or y not in result.forward or result.forward[x].K <= 0:
            continue
        parts = [v for v in concat.inputs if is_signal(v) and v in result.forward]
        energies = [result.forward[v].K for v in parts]
        forward = result.forward[y].K / result.forward[x].K
        if not 0 < forward < math.inf:
            continue  # a dead or overflowing conv: the signal checks say so
        grad_y, grad_x = result.backward.get(y), result.backward.get(x)
        backward = grad_x / grad_y if grad_y and grad_x and math.isfinite(grad_x / grad_y) else None
        imbalance = max(energies) / min(energies) if energies and min(energies) > 0 else math.inf
        shifted = abs(math.log(forward)) >= gain or (backward and abs(math.log(backward)) >= gain)
        if imbalance < imbalance_limit and not shifted:
            continue
        channels = "+".join(str(v.shape[1]) if v.shape and len(v.shape) > 1 else "?" for v in parts)
        out_channels = y.shape[1] if y.shape and len(y.shape) > 1 else "?"
        keep_forward = 1 / math.sqrt(forward)
        message = (
            f"'{node.label}' ({node.source_op}) reads a concat of {len(parts)} parts ({channels} -> "
            f"{out_channels} channels): forward gain x{forward:.3g}"
            + (f", backward gain x{backward:.3g} per input element" if backward else "")
            + " (the merge changes the fan-in the init was computed for)"
        )
        fix = f"weights x{keep_forward:.3g} keep the forward signal"
        if backward:
            fix += (
                f" (backward then x{backward * keep_forward**2:.3g}); x{1 / math.sqrt(backward):.3g} keeps the "
                f"gradient; x{(forward * backward) ** -0.25:.3g} balances both (geometric mean)"
            )
        if imbalance >= imbalance_limit:
            loud = max(range(len(parts)), key=lambda i: energies[i])
            message += (
                f"; the parts' K differ x{imbalance:.3g} (K = {', '.join(f'{e:.3g}' for e in energies)}), so "
                f"'{parts[loud].name}' dominates the output and the quieter part's signal is drowned"
            )
            fix += "; normalise each part before the concat, or scale the quieter part by sqrt of the K ratio"
        findings.append(
            Finding(
                "IC509",
                "warning" if imbalance >= imbalance_limit else "info",
                "concat",
                message,
                node.name,
                node.scope,
                imbalance if imbalance >= imbalance_limit else forward,
                imbalance_limit if imbalance >= imbalance_limit else math.exp(gain),
                fix + "; the same in training and eval mode",
                keep_forward,
                details={"forward_gain": forward, "backward_gain": backward or math.nan, "part_imbalance": imbalance},
                repair=_branch_ends(parts, [math.sqrt(max(energies) / e) for e in energies])
                if imbalance >= imbalance_limit
                else repairs.change([repairs.of_node(node, keep_forward)]),  # the fan-in shift: forward gain back to 1
                measure=Measure("K_ratio", (y.name, x.name)),
            )
        )
    return findings


@check("branch sum", "IC508")
def _branch_sum_check(ctx: CheckContext) -> list[Finding]:
    return branch_sum_findings(ctx.graph, ctx.result)


@check("concat", "IC509")
def _concat_check(ctx: CheckContext) -> list[Finding]:
    return concat_findings(ctx.graph, ctx.result)
