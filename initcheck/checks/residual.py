"""Residual streams (docs/theory.md §5): unscaled growth (IC502), over-correction (IC503), and where the
normalisation sits in a transformer stack, Pre-LN or Post-LN (IC516)."""

from __future__ import annotations

import math
from statistics import median

from initcheck.analysis.layers import normalized_downstream
from initcheck.analysis.symbolic import SymbolicResult
from initcheck.checks import repairs
from initcheck.checks.registry import CheckContext, check
from initcheck.codes import limit
from initcheck.ir import Graph, Node, Value
from initcheck.passes import is_signal, reaches, trace_back
from initcheck.report.model import Finding, Measure
from initcheck.rules.common import normalizes


def residual_blocks(graph: Graph) -> list[tuple[Node, Value, Value]]:
    """(add node, skip input x, branch input f(x)) for every y = x + f(x)."""
    blocks = []
    for node in graph.nodes:
        if node.op not in ("add", "sum") or len([v for v in node.inputs if is_signal(v)]) != 2:
            continue
        a, b = (v for v in node.inputs if is_signal(v))
        if reaches(b, a):
            blocks.append((node, a, b))
        elif reaches(a, b):
            blocks.append((node, b, a))
    return blocks


def _is_rescaling(node: Node) -> bool:
    """A scalar multiply/divide of the stream (a block's own 1/sqrt(2), say), possibly fused."""
    if node.op == "pointwise":
        program = node.attrs["program"]
        return program[0] in ("mul", "div") and ("x",) in program[2:] and any(a[0] == "const" for a in program[2:])
    return node.op in ("mul", "div") and sum(1 for v in node.inputs if is_signal(v)) == 1


def stream_value(add: Node) -> Value:
    """The residual stream after the block: the Add's output followed through scalar rescalings."""
    value = add.outputs[0]
    while len(value.consumers) == 1 and _is_rescaling(value.consumers[0]):
        value = value.consumers[0].outputs[0]
    return value


def residual_findings(graph: Graph, result: SymbolicResult) -> list[Finding]:
    """Streams y = s (x + f(x)): per block K x s^2 (1 + g), g = K_f/K_x; Pi over each stream (docs/theory.md §5). A
    block whose skip path is not the previous block's output (a ResNet stage's conv + norm shortcut) starts a new
    stream: growth is never multiplied across a reset."""
    blocks = [
        (n, x, f)
        for n, x, f in residual_blocks(graph)
        if result.forward.get(x) and result.forward.get(f) and result.forward.get(stream_value(n))
    ]
    findings = []
    for stream in _streams(blocks):
        findings += _stream_findings(stream, result)
    return findings


def _streams(blocks: list[tuple[Node, Value, Value]]) -> list[list[tuple[Node, Value, Value]]]:
    """Blocks grouped by the stream they continue: block b continues a's stream when its skip input is a's sum
    through weightless single-input ops (activations, a scalar rescale, dropout, reshapes)."""
    streams: list[list] = []
    owner: dict[int, int] = {}
    for block in blocks:
        found = owner.get(id(trace_back(block[1])))
        if found is None:
            found = len(streams)
            streams.append([])
        streams[found].append(block)
        owner[id(block[0].outputs[0])] = found
    return streams


def _stream_findings(blocks, result: SymbolicResult) -> list[Finding]:
    if not blocks:
        return []
    growth = [result.forward[stream_value(n)].K / result.forward[x].K for n, x, _ in blocks if result.forward[x].K > 0]
    gains = [result.forward[f].K / result.forward[x].K for _, x, f in blocks if result.forward[x].K > 0]
    if not growth:
        return []
    total = math.prod(growth)
    typical_g = sorted(gains)[len(gains) // 2]
    last = blocks[-1][0]
    stream = Measure("K_ratio", (stream_value(last).name, blocks[0][1].name))  # measured growth over the whole stream
    findings = []
    exploding = sum(1 for r in growth if r >= limit("IC502", "growth"))
    if exploding >= limit("IC502", "blocks"):
        scale = 1 / math.sqrt(1 + typical_g)
        findings.append(
            Finding(
                "IC502",
                "warning",
                "residual",
                f"{len(blocks)} residual blocks y = x + f(x) with branch gain g = K_f/K_x ~ {typical_g:.3g}: K grows "
                f"x{sorted(growth)[len(growth) // 2]:.3g} per block, x{total:.3g} over the stream (Pi(1+g); 2^L only when "
                "g = 1), and the gradient grows alike toward the input",
                last.name,
                last.scope,
                total,
                limit("IC502", "growth"),
                f"scale each block as (x + f(x)) * {scale:.3g} (= 1/sqrt(1+g)), or the branch by alpha with "
                f"alpha^2 g = 1/L (alpha = {1 / math.sqrt(max(typical_g, 1e-12) * len(blocks)):.3g}), or zero-init the "
                "last layer of f, or normalise; each keeps forward and backward gains near 1 in train and eval mode",
                scale,
                measure=stream,
                repair=_branch_repair([f for _, _, f in blocks], 1 / math.sqrt(max(typical_g, 1e-12) * len(blocks))),
            )
        )
    shrinking = sum(1 for r in growth if r <= limit("IC503", "shrink"))
    if shrinking >= limit("IC503", "blocks"):
        per_block = sorted(growth)[len(growth) // 2]
        findings.append(
            Finding(
                "IC503",
                "warning",
                "residual",
                f"{len(blocks)} residual blocks shrink K x{per_block:.3g} per block (x{total:.3g} over the stream): the "
                "block is over-corrected (e.g. /sqrt(2) with a branch gain g = 1/2 gives 0.75^L)",
                last.name,
                last.scope,
                total,
                limit("IC503", "shrink"),
                f"use the scale 1/sqrt(1+g) for the actual g ~ {typical_g:.3g}: multiply the current scale by "
                f"{1 / math.sqrt(per_block):.3g}",
                1 / math.sqrt(per_block),
                measure=stream,
                repair=repairs.unfixable("the blocks' scale is a constant of the graph, not a weight: change it there"),
            )
        )
    return findings


def _placement(add: Node, x: Value, f: Value) -> str | None:
    """'pre' for x + f(LN(x)), 'post' for LN(x + f(x)), None otherwise."""
    if any(c is not add and normalizes(c) and reaches(f, c.outputs[0]) for c in x.consumers):
        return "pre"
    out = stream_value(add)
    if len(out.consumers) == 1 and normalizes(out.consumers[0]):
        return "post"
    return None


def norm_placement_findings(graph: Graph, result: SymbolicResult) -> list[Finding]:
    """Pre-LN streams grow linearly, K_l = K_0 + c l, and the gradient toward the input grows alike (G_0/G_L =
    K_L/K_0 for matched branches); Post-LN keeps K fixed and scales the gradient by (1 + chi_f)/(1 + g) per block."""
    blocks = [(n, x, f, _placement(n, x, f)) for n, x, f in residual_blocks(graph)]
    findings = []
    for kind in ("pre", "post"):
        mine = [(n, x) for n, x, _, p in blocks if p == kind]
        if len(mine) < 2:
            continue
        start = mine[0][1]
        end = stream_value(mine[-1][0])
        if kind == "post":
            end = end.consumers[0].outputs[0]
        if start not in result.forward or end not in result.forward or not result.backward.get(end):
            continue
        growth = result.forward[end].K / result.forward[start].K
        gradient = result.backward.get(start, 0.0) / result.backward[end]
        findings.append(
            _pre_ln(
                mine,
                start,
                end,
                growth,
                gradient,
                end in normalized_downstream(graph),
                _depth_scaled(graph, [f for n, _, f, p in blocks if p == kind]),
                [f for n, _, f, p in blocks if p == kind],
            )
            if kind == "pre"
            else _post_ln(mine, start, end, gradient)
        )
    return findings


def _branch_end(value: Value) -> Node | None:
    """The weighted layer that writes a branch into the stream (attention's output projection, the MLP's last)."""
    producer = trace_back(value).producer
    return producer if producer is not None and producer.params.get("weight") is not None else None


def _depth_scaled(graph: Graph, branches: list[Value]) -> bool:
    """Whether the layers that write the branches into the stream start smaller than the stack's other layers
    (GPT-2's std/sqrt(2 L), ~0.2x at 12 layers): the growth of the stream is then the design, not an oversight."""
    ends = {n for n in (_branch_end(f) for f in branches) if n is not None}
    others = [n for n in graph.nodes if n.op == "linear" and n not in ends and n.params.get("weight") is not None]
    if not ends or not others:
        return False
    return median(map(_weight_std, ends)) < 0.7 * median(map(_weight_std, others))


def _weight_std(node: Node) -> float:
    return math.sqrt(node.params["weight"].w_sq)


def _pre_ln(
    blocks,
    start: Value,
    end: Value,
    growth: float,
    gradient: float,
    normalized_later: bool,
    depth_scaled: bool,
    branches: list[Value],
) -> Finding:
    """Harmless growth is info; a stream growing by a decade or more (GPT-2 without its 1/sqrt(2L) scaling of the
    residual projections: x54 over 12 layers at N(0, 0.02)) warns: the last blocks' updates are drowned in a stream
    many times their size and the first blocks' gradients are that much larger."""
    final_norm = normalized_later or any(normalizes(c) for c in end.consumers)  # a U-Net's norm_out counts too
    last = blocks[-1][0]
    too_much = growth >= 10 ** limit("IC516", "decades") and not depth_scaled
    scale = 1 / math.sqrt(max(growth - 1, 1e-12))  # branch energies add: c -> 1/L keeps the stream within x2
    if too_much:
        verdict = (
            "; a decade or more, and the layers that write the branches into the stream start no smaller "
            "than the stack's others: late blocks write into a stream many times the size they start at, and "
            "early blocks get gradients that much larger (GPT-2 scales its residual projections by "
            "1/sqrt(2 x layers) for this)"
        )
        fix = (
            f"scale the last layer of every residual branch (attention and MLP output projections) by "
            f"{scale:.3g}, e.g. std/sqrt(2 x layers) as GPT-2 does, to keep the stream within x2"
        )
    else:
        verdict = "; every branch reads the stream through a normalisation, so this is harmless"
        fix = "nothing to do"
    if not final_norm:
        verdict += f", but nothing normalises the stream at its end: the output reads a stream {growth:.3g}x its start"
        fix = "add a final normalisation after the last block (as GPT-2's ln_f)" + ("; and " + fix if too_much else "")
    return Finding(
        "IC516",
        "warning" if too_much or not final_norm else "info",
        "residual",
        f"pre-norm (Pre-LN) stack of {len(blocks)} residual blocks: the stream's K grows x{growth:.3g} (linearly, K_l = K_0 + c l) "
        f"and the gradient toward its start x{gradient:.3g} (theory: ~ the same factor)" + verdict,
        last.name,
        last.scope,
        growth,
        10 ** limit("IC516", "decades"),
        fix,
        scale if too_much else None,
        details={"blocks": len(blocks), "stream_growth": growth, "gradient_ratio": gradient},
        measure=Measure("K_ratio", (end.name, start.name)),
        repair=_branch_repair(branches, scale) if too_much else None,
    )  # the value is the stream's growth: measured alike


def _branch_repair(branches: list[Value], factor: float):
    """The same factor on the layer that writes each branch into the stream."""
    ends = [_branch_end(f) for f in branches]
    if any(e is None for e in ends):
        return repairs.unfixable("a branch ends in no weighted layer that could carry the scale")
    return repairs.change([repairs.of_node(e, factor) for e in ends if e is not None])


def _post_ln(blocks, start: Value, end: Value, gradient: float) -> Finding:
    last = blocks[-1][0]
    shrinking = gradient > 0 and abs(math.log10(gradient)) >= limit("IC516", "decades")
    alpha = (2 * len(blocks)) ** 0.25
    return Finding(
        "IC516",
        "warning" if shrinking else "info",
        "residual",
        f"Post-LN stack of {len(blocks)} residual blocks: K is reset every block and the gradient reaching the "
        f"stack's input is x{gradient:.3g} the gradient at its output (per block (1 + chi_f)/(1 + g))"
        + (
            "; early blocks train much slower than late ones, the reason Post-LN needs learning-rate warm-up"
            if shrinking
            else ""
        ),
        last.name,
        last.scope,
        gradient,
        10 ** -limit("IC516", "decades"),
        "Pre-LN placement, or DeepNorm (stream x alpha + f(x) with alpha = (2N)^(1/4) = "
        f"{alpha:.3g}, branch init scaled down), or warm-up"
        if shrinking
        else "nothing to do",
        alpha if shrinking else None,
        details={"blocks": len(blocks)},
        measure=Measure("G_energy_ratio", (start.name, end.name)),
    )


@check("residual", "IC502", "IC503")
def _residual_check(ctx: CheckContext) -> list[Finding]:
    return residual_findings(ctx.graph, ctx.result)


@check("norm placement", "IC516")
def _norm_placement_check(ctx: CheckContext) -> list[Finding]:
    return norm_placement_findings(ctx.graph, ctx.result)
