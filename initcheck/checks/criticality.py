"""Criticality and the weights' own statistics (docs/theory.md §1, §4): off-critical chains (IC512), input-correlation
collapse (IC513), non-zero-mean weights (IC510) and biases that dominate the signal (IC511)."""

from __future__ import annotations

import math

from initcheck.analysis.criticality import CRITICAL, Susceptibility, through
from initcheck.analysis.symbolic import SymbolicResult
from initcheck.checks import repairs
from initcheck.checks.registry import CheckContext, check
from initcheck.codes import limit
from initcheck.ir import Graph, Node
from initcheck.report.model import Finding, Measure

_MATRICES = ("linear", "conv", "conv_transpose")


def weight_mean_findings(graph: Graph, result: SymbolicResult) -> list[Finding]:
    """W = mu + noise: every row sum carries fan_in mu, so all units share one component (fraction mu^2 / E[W^2]
    of the output energy on a zero-mean input) and an input mean is amplified by R / (fan_in E[W^2]) (§1)."""
    findings = []
    for node in graph.nodes:
        w = node.params.get("weight") if node.op in _MATRICES else None
        if w is None or w.w_sq <= 0 or w.fan_in < 2 or w.w_sq - w.w_mean**2 <= 1e-12 * w.w_sq:
            continue  # constant matrices are IC202's
        common = w.w_mean**2 / w.w_sq
        if common < limit("IC510", "common_share"):
            continue
        amplification = w.row_sum_sq / (w.fan_in * w.w_sq)
        std = math.sqrt(w.w_sq - w.w_mean**2)
        findings.append(
            Finding(
                "IC510",
                "warning",
                "weights",
                f"'{node.label}': weights have mean {w.w_mean:.3g} = {abs(w.w_mean) / std:.3g} std: every row sums to "
                f"~{w.row_sum_mean:.3g}, so all units share one component ({common:.0%} of the output energy on a "
                f"zero-mean input) and an input mean is amplified x{amplification:.3g} (x1 for zero-mean weights); the "
                "units start nearly identical and the gradient pushes them alike",
                node.name,
                node.scope,
                common,
                limit("IC510", "common_share"),
                f"subtract the mean ({-w.w_mean:.3g}) from every weight, or re-initialise with a zero-mean init of std "
                f"{std:.3g}; this changes the backward pass alike (rows and columns share the offset)",
                -w.w_mean,
                details={"weight_mean": w.w_mean, "weight_std": std, "mean_amplification": amplification},
                repair=repairs.change([repairs.centered(node)]),
            )
        )
    return findings


def bias_findings(graph: Graph, result: SymbolicResult) -> list[Finding]:
    """E[b^2] / K_y: the share of a layer's output that is the same for every input."""
    findings = []
    for node in graph.nodes:
        w = node.params.get("weight") if node.op in _MATRICES else None
        out = result.forward.get(node.outputs[0]) if w is not None else None
        if w is None or out is None or out.K <= 0 or w.bias_sq <= 0:
            continue
        share = w.bias_sq / out.K
        if share < limit("IC511", "share"):
            continue
        signal = max(out.K - w.bias_sq, 0.0)
        scale = math.sqrt(signal / (9 * w.bias_sq)) if signal > 0 else 0.0  # bias at 10% of K
        findings.append(
            Finding(
                "IC511",
                "warning",
                "weights",
                f"'{node.label}': the bias's energy E[b^2] = {w.bias_sq:.3g} is {share:.0%} of the output's second moment "
                f"K = {out.K:.3g}: the output is nearly the same for every input, and the layers after it see mostly "
                "a constant",
                node.name,
                node.scope,
                share,
                limit("IC511", "share"),
                (f"scale the bias by {scale:.3g} (to 10% of K) or zero-init it" if scale > 0 else "zero-init the bias")
                + (", and fix the vanishing input signal that lets it dominate" if signal < 0.1 * out.K else ""),
                scale,
                details={"bias_sq": w.bias_sq, "K": out.K},
                repair=repairs.change([repairs.filled(node, "bias_tensor", 0.0)]),
            )
        )
    return findings


def chains(found: dict[Node, Susceptibility]) -> list[list[Susceptibility]]:
    """Maximal sequences activation -> layer -> activation of the plain chains in `found` (topological order)."""
    following: dict[Node, Node] = {}
    for activation, s in found.items():
        out = through(s.weighted.outputs[0])
        nxt = out.consumers[0] if len(out.consumers) == 1 else None
        if nxt in found:
            following[activation] = nxt
    starts = [n for n in found if n not in set(following.values())]
    result = []
    for start in starts:
        chain: list[Susceptibility] = []
        at: Node | None = start
        while at is not None and len(chain) <= len(found):
            chain.append(found[at])
            at = following.get(at)
        result.append(chain)
    return result


def criticality_findings(found: dict[Node, Susceptibility], result: SymbolicResult) -> list[Finding]:
    findings = []
    for chain in chains(found):
        if len(chain) < limit("IC512", "layers"):
            continue
        findings += _off_critical(chain) + _collapse(chain, result)
    return findings


def _off_critical(chain: list[Susceptibility]) -> list[Finding]:
    """Pi chi_perp over the chain is its gradient factor (docs/theory.md §4): the ordered phase (< 1) vanishes and
    collapses inputs, the chaotic phase (> 1) explodes and decorrelates nearby inputs."""
    product = math.prod(s.chi_perp for s in chain)
    decades = limit("IC512", "decades")
    if product > 0 and abs(math.log10(product)) < decades:
        return []
    first = chain[0]
    mean_chi = product ** (1 / len(chain)) if product > 0 else 0.0
    ratios = sorted(s.C_W_critical / s.C_W for s in chain if s.C_W > 0)
    scale = math.sqrt(ratios[len(ratios) // 2]) if ratios else 1.0
    family = CRITICAL.get(first.activation, "unknown")
    point = (
        "no critical point exists for this activation (docs/theory.md §4): use a normalisation"
        if family is None
        else f"its critical point is C_b = {family[0]:g}, C_W = {family[1]:g}"
        if family != "unknown"
        else ""
    )
    ordered = mean_chi < 1
    at_point = isinstance(family, tuple) and abs(chain[len(chain) // 2].C_W / family[1] - 1) < 0.1
    if at_point:  # e.g. tanh at C_W = 1: critical only as K -> 0, so the gradient still decays (polynomially)
        point += "; the weights sit at it, and the remaining drift is K's slow approach to its fixed point"
    return [
        Finding(
            "IC512",
            "warning",
            "criticality",
            f"{len(chain)} {first.activation} layers starting at '{first.weighted.label}': chi_perp ~ {mean_chi:.3g} per layer "
            f"(chi_par {math.prod(s.chi_par for s in chain) ** (1 / len(chain)):.3g}), x{product:.3g} over the chain: the "
            + (
                "ordered phase: gradients vanish toward the input and distinct inputs converge"
                if ordered
                else "chaotic phase: gradients explode toward the input and nearby inputs decorrelate"
            )
            + f"; the weights have C_W = fan_in E[W^2] ~ {chain[len(chain) // 2].C_W:.3g}"
            + (f", {point}" if point else ""),
            first.weighted.name,
            first.weighted.scope,
            product,
            10 ** (-decades if ordered else decades),
            f"scale the chain's weights by {scale:.3g} (C_W -> 1/<phi'^2>_K, chi_perp = 1 at the current K); for a "
            "non-homogeneous activation re-check after the change, since K moves with C_W",
            scale,
            details={"chi_perp_mean": mean_chi, "layers": len(chain)},
            repair=repairs.change([repairs.of_node(s.weighted, scale) for s in chain])
            if family is not None
            else repairs.unfixable("this activation has no critical point: only a normalisation helps"),
        )
    ]


def _collapse(chain: list[Susceptibility], result: SymbolicResult) -> list[Finding]:
    """rho = M/K of a pre-activation is the correlation of two inputs' representations (the kernel map of
    §1 and §4): near 1, the network sees every input alike."""
    rhos = [result.forward[s.preactivation].M / result.forward[s.preactivation].K for s in chain]
    last = chain[-1]
    if rhos[-1] < limit("IC513", "rho") or rhos[-1] - min(rhos) < limit("IC513", "rise"):
        return []
    return [
        Finding(
            "IC513",
            "warning",
            "correlation",
            f"'{last.weighted.label}': two different inputs' pre-activations correlate at rho = {rhos[-1]:.3g} after "
            f"{len(chain)} {last.activation} layers (from {min(rhos):.2g}): only {1 - rhos[-1]:.1%} of the energy tells "
            "inputs apart, so outputs and gradients are nearly input-independent at init (ordered-phase collapse)",
            last.preactivation.producer.name if last.preactivation.producer else "",
            last.weighted.scope,
            rhos[-1],
            limit("IC513", "rho"),
            "zero-init the biases, make the chain shallower, add normalisation or residual connections; at criticality "
            "ReLU chains still collapse polynomially (1 - rho ~ 1/L^2)",
            None,
            details={"rho_first": rhos[0]},
            measure=Measure("cosine", (last.preactivation.name,)),
        )
    ]


@check("weight mean", "IC510")
def _weight_mean_check(ctx: CheckContext) -> list[Finding]:
    return weight_mean_findings(ctx.graph, ctx.result)


@check("bias", "IC511")
def _bias_check(ctx: CheckContext) -> list[Finding]:
    return bias_findings(ctx.graph, ctx.result)


@check("criticality", "IC512", "IC513")
def _criticality_check(ctx: CheckContext) -> list[Finding]:
    return criticality_findings(ctx.chis, ctx.result)
