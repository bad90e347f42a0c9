"""Up- and down-sampling patterns (docs/theory.md §3): transposed-conv checkerboards (IC501), sub-pixel convs
without ICNR (IC514), and strided convs whose gradient reaches their input as a checkerboard (IC515)."""

from __future__ import annotations

import math

from initcheck.analysis.symbolic import SymbolicResult
from initcheck.checks import repairs
from initcheck.checks.registry import CheckContext, check
from initcheck.codes import limit
from initcheck.ir import Graph, Node, Value
from initcheck.passes import is_signal
from initcheck.report.model import Finding, Measure
from initcheck.stats import taps_per_phase

# ops after which gradient position (i, j) still belongs to input position (i, j)
_POSITIONWISE = {"pointwise", "prelu", "batch_norm", "identity", "cast", "dropout", "mul", "add", "sub", "div"}


def checkerboard_findings(graph: Graph, result: SymbolicResult) -> list[Finding]:
    """ConvTranspose: per-output-phase K from the actual per-tap weights; ratio max/min (docs/theory.md §3)."""
    findings = []
    for node in graph.nodes:
        out = result.forward.get(node.outputs[0]) if node.op == "conv_transpose" else None
        if out is None or not out.phases:
            continue
        low, high = min(out.phases), max(out.phases)
        ratio = high / low if low > 0 else math.inf
        if ratio < limit("IC501", "warning"):
            continue
        kernel, strides = node.attrs["kernel"], node.attrs["strides"]
        divisible = all(k % s == 0 for k, s in zip(kernel, strides))
        suggestion = [max(s, -(-k // s) * s) for k, s in zip(kernel, strides)]
        cause = (
            "a phase receives no tap at all"
            if ratio == math.inf
            else f"kernel {kernel} is not divisible by stride {strides}, so output phases get unequal tap counts"
            if not divisible
            else "the actual tap sums differ between phases"
        )
        sums = node.params["weight"].phase_row_sum_sq or ()
        mean_path = max(sums) / min(sums) if sums and min(sums) > 0 else math.inf
        findings.append(
            Finding(
                "IC501",
                "error" if ratio >= limit("IC501", "error") else "warning",
                "checkerboard",
                f"'{node.label}' (ConvTranspose k={kernel}, s={strides}): per-phase second moment ratio "
                f"{ratio:.3g} (max/min over {len(out.phases)} phases, interior positions): {cause}; the output starts as a checkerboard"
                f" (a constant input alone gives phase ratio {mean_path:.3g}, from the per-phase tap sums)",
                node.name,
                node.scope,
                ratio,
                limit("IC501", "warning"),
                f"use kernel {suggestion} (divisible by the stride), or nearest-resize then a stride-1 conv, or "
                "phase-balanced taps (k=3,s=2: per-axis profile [1,2,1]); rescaling the weights to the average fan-in "
                "fixes the mean gain, not the pattern; the backward pass has the same phase structure on its input",
                float(suggestion[0]),
                details={"mean_path_ratio": mean_path},
                measure=Measure("phase_ratio", (node.outputs[0].name,)),
            )
        )
    return findings


def subpixel_findings(graph: Graph) -> list[Finding]:
    """conv -> PixelShuffle/DepthToSpace: the r^2 sub-pixels of a block come from independent kernels, so even a
    constant input comes out as a random periodic pattern; ICNR (all sub-pixel kernels equal) gives coherence 1."""
    findings = []
    for node in graph.nodes:
        info = node.params.get("subpixel") if node.op == "conv" else None
        if not info or info["coherence"] >= limit("IC514", "coherence"):
            continue
        r = info["block"]
        findings.append(
            Finding(
                "IC514",
                "info",
                "checkerboard",
                f"'{node.label}' feeds a {r}x{r} pixel shuffle with sub-pixel kernel coherence {info['coherence']:.2f} (1 = "
                f"ICNR): the {r * r} sub-pixels of every output block are independent, so even a constant input comes "
                "out as a random periodic pattern that training must first remove",
                node.name,
                node.scope,
                info["coherence"],
                limit("IC514", "coherence"),
                f"ICNR init: initialise one kernel per output channel and copy it to all {r * r} sub-pixel positions "
                "(equivalent to conv + nearest up-sampling at init); forward gain and backward gain are unchanged",
                1.0,
                details={"block": r},
                repair=repairs.change([repairs.icnr(node, r, info.get("channel_first", True))]),
            )
        )
    return findings


def _gradient_phases(node: Node) -> tuple[float, list[int]]:
    """Backward of a strided conv on its input grid: per axis, the taps per phase (iid expectation of
    G_x,r = G_y sum_{t in T_r} E_t); the 2-D ratio is the product of the per-axis ratios."""
    ratio, counts = 1.0, []
    for k, s, d in zip(node.attrs["kernel"], node.attrs["strides"], node.attrs.get("dilations") or [1] * 3):
        per_phase = [len(t) for t in taps_per_phase(k, s, d)]
        counts.append(min(per_phase))
        ratio = math.inf if min(per_phase) == 0 else ratio * max(per_phase) / min(per_phase)
    return ratio, counts


def _pattern_lands_on(value: Value) -> Value | None:
    """Follow the gradient back through position-wise ops to the value that keeps the pattern; None where it
    merges with other paths (a fork: summed phase grids cannot be judged per path) or reaches the input."""
    while len(value.consumers) == 1 and value.producer is not None:
        producer = value.producer
        pointwise_conv = (
            producer.op == "conv"
            and all(k == 1 for k in producer.attrs["kernel"])
            and all(s == 1 for s in producer.attrs["strides"])
        )
        if producer.op not in _POSITIONWISE and not pointwise_conv:
            return value
        signals = [v for v in producer.inputs if is_signal(v)]
        if len(signals) != 1:
            return None  # a merge: the pattern is summed with another path's
        value = signals[0]
    return None


def strided_gradient_findings(graph: Graph, result: SymbolicResult) -> list[Finding]:
    findings = []
    for node in graph.nodes:
        if node.op != "conv" or all(s == 1 for s in node.attrs["strides"]):
            continue
        ratio, _ = _gradient_phases(node)
        target = _pattern_lands_on(node.input(0)) if ratio >= limit("IC515", "info") else None
        if target is None:
            continue
        kernel, strides = node.attrs["kernel"], node.attrs["strides"]
        dead = ratio == math.inf
        suggestion = [max(s, -(-k // s) * s) for k, s in zip(kernel, strides)]
        where = target.producer.label if target.producer else target.name
        findings.append(
            Finding(
                "IC515",
                "warning" if ratio >= limit("IC515", "warning") else "info",
                "checkerboard",
                f"'{node.label}' (conv k={kernel}, s={strides}): "
                + (
                    "some input positions are read by no tap, so they receive no gradient at all"
                    if dead
                    else f"its gradient reaches the input positions of '{where}' with a per-phase ratio {ratio:.3g} (taps per "
                    "phase differ)"
                )
                + f"; nothing else reads '{where}''s output, so the pattern is not evened out by another path",
                node.name,
                node.scope,
                ratio,
                limit("IC515", "info"),
                f"use kernel {suggestion} (divisible by the stride), or pool/blur then a stride-1 conv; the forward pass "
                "is unaffected (every output sees the same taps)",
                float(suggestion[0]),
            )
        )
    return findings


@check("checkerboard", "IC501")
def _checkerboard_check(ctx: CheckContext) -> list[Finding]:
    return checkerboard_findings(ctx.graph, ctx.result)


@check("sub-pixel", "IC514")
def _sub_pixel_check(ctx: CheckContext) -> list[Finding]:
    return subpixel_findings(ctx.graph)


@check("strided gradient", "IC515")
def _strided_gradient_check(ctx: CheckContext) -> list[Finding]:
    return strided_gradient_findings(ctx.graph, ctx.result)
