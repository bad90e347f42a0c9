"""Graph attention (GAT, docs/theory.md §9): logits e_ij = act(u_i + w_j) from a node part u_i and a neighbour part
w_j, softmax over each node's neighbours. Only w spreads the logits within a row, and with it the max logit
grows with the degree d: relative to uniform, attention gets sharper (d E p_max grows) while p_max itself
falls. Degree-aware scaling by e_ref / e_d (expected max of d Gaussians) keeps the sharpness degree-independent.
"""

from __future__ import annotations

from functools import lru_cache
from statistics import NormalDist

import numpy as np

from initcheck import pointwise
from initcheck.analysis.symbolic import SymbolicResult
from initcheck.checks.registry import CheckContext, check
from initcheck.codes import limit
from initcheck.ir import Graph, Node, Value
from initcheck.passes import is_signal
from initcheck.report.model import Finding

REFERENCE_DEGREE = 16
SWEEP = (4, 64, 1024)
_ROWS = 1 << 17


def expected_max(n: int) -> float:
    """E max of n iid N(0, 1), Blom's approximation (< 0.5% error, docs/theory.md §9)."""
    return NormalDist().inv_cdf((n - 0.375) / (n + 0.25)) if n > 1 else 0.0


@lru_cache(maxsize=256)
def gat_statistics(sigma_u: float, sigma_w: float, degree: int, program: tuple, scale: float = 1.0) -> dict:
    """Fixed-seed integration over rows: E p_max, entropy / ln d and sharpness d E p_max for logits
    scale * act(u + w_j), u ~ N(0, sigma_u^2) per row, w_j ~ N(0, sigma_w^2) per neighbour."""
    rows = max(64, min(4096, _ROWS // max(degree, 1)))
    rng = np.random.default_rng(2024)
    u = rng.standard_normal((rows, 1)) * sigma_u
    w = rng.standard_normal((rows, degree)) * sigma_w
    logits = scale * pointwise.as_function(program)(u + w)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    entropy = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=1)
    p_max = float(p.max(axis=1).mean())
    return {
        "p_max": p_max,
        "entropy_ratio": float(entropy.mean() / np.log(degree)) if degree > 1 else 1.0,
        "sharpness": degree * p_max,
    }


def _logit_parts(softmax: Node) -> tuple[Value, Value, tuple, np.ndarray | None] | None:
    """(node part, neighbour part, activation program, per-row logit scale) when the logits are
    scale_i * act(u_i + w_j), masks allowed."""
    value, program, scale = softmax.inputs[0], ("x",), None
    for _ in range(8):
        producer = value.producer if value is not None else None
        if producer is None:
            return None
        signals = [v for v in producer.inputs if is_signal(v)]
        shapes = [v.shape for v in signals]
        if producer.op == "add" and len(signals) == 2 and all(s and len(s) >= 2 for s in shapes):
            rows = [v for v, s in zip(signals, shapes) if s and s[-1] == 1 and s[-2] != 1]
            keys = [v for v, s in zip(signals, shapes) if s and s[-2] == 1 and s[-1] != 1]
            return (rows[0], keys[0], program, scale) if rows and keys else None
        if producer.op == "pointwise":
            program = producer.attrs["program"]
        elif producer.op == "mul" and len(signals) == 1:
            const = next((v.array for v in producer.inputs if v is not None and v.array is not None), None)
            if const is None:
                return None
            scale = np.asarray(const, dtype=np.float64).reshape(-1)
        elif producer.op not in ("where", "add", "identity", "cast"):
            return None
        value = signals[0] if signals else None
    return None


def _row_scale(scale: np.ndarray | None, keys: np.ndarray | None, degree: int) -> float:
    """The logit scale of rows with this degree (1 without a scale; the mean where rows are not known)."""
    if scale is None:
        return 1.0
    if scale.size == 1 or keys is None or len(keys) != scale.size:
        return float(scale.mean())
    chosen = scale[np.asarray(keys) == degree]
    return float(chosen.mean()) if chosen.size else float(scale.mean())


def _degrees(softmax: Node, result: SymbolicResult, hint: int | None) -> tuple[list[int], bool]:
    """The neighbour counts per row from the mask the logits carry; else the hint; else the key axis."""
    logits = result.forward.get(softmax.input(0))
    if logits is not None and logits.valid_keys is not None and len(logits.valid_keys):
        return sorted({int(d) for d in logits.valid_keys if d > 0}), True
    if hint:
        return [int(hint)], True
    shape = softmax.input(0).shape
    return ([int(shape[-1])] if shape and shape[-1] else []), False


def graph_attention_findings(graph: Graph, result: SymbolicResult, degree_hint: int | None = None) -> list[Finding]:
    findings = []
    for node in graph.nodes:
        parts = _logit_parts(node) if node.op == "softmax" else None
        if parts is None or parts[0] not in result.forward or parts[1] not in result.forward:
            continue
        u, w, program, row_scale = parts
        sigma_u, sigma_w = (round(float(np.sqrt(result.forward[v].var)), 4) for v in (u, w))
        degrees, known = _degrees(node, result, degree_hint)
        if not degrees:
            continue
        keys = result.forward[node.input(0)].valid_keys
        low, high = (degrees[0], degrees[-1]) if known and degrees[0] != degrees[-1] else (SWEEP[0], SWEEP[-1])
        at = {
            d: gat_statistics(sigma_u, sigma_w, d, program, round(_row_scale(row_scale, keys, d), 4))
            for d in {low, high, *degrees[-1:]}
        }
        spread = at[high]["sharpness"] / at[low]["sharpness"]
        scale = expected_max(REFERENCE_DEGREE) / expected_max(high)
        scaled = gat_statistics(sigma_u, sigma_w, high, program, round(scale, 4))
        top = degrees[-1]
        findings.append(
            Finding(
                "IC517",
                "warning" if known and spread >= limit("IC517", "spread") else "info",
                "attention",
                f"'{node.label}': graph attention (logits act(u_i + w_j), neighbour-part std {sigma_w:.3g}, node-part std "
                f"{sigma_u:.3g}) at degree {top}: max probability {at[top]['p_max']:.3g}, entropy "
                f"{at[top]['entropy_ratio']:.0%} of ln d; sharpness d * p_max goes from {at[low]['sharpness']:.3g} at "
                f"degree {low} to {at[high]['sharpness']:.3g} at degree {high}"
                + ("" if known else " (degree sweep: the graph does not carry its degrees, pass --degree)")
                + ": high-degree nodes attend relatively sharper, and their output K falls like e^(sigma^2)/d",
                node.name,
                node.scope,
                spread,
                limit("IC517", "spread"),
                f"scale each node's logits by e_{REFERENCE_DEGREE} / e_d (expected max of d Gaussians; {scale:.3g} at "
                f"degree {high}, giving sharpness {scaled['sharpness']:.3g}) to make attention sharpness degree-independent",
                scale,
                details={
                    "degree_min": low,
                    "degree_max": high,
                    "sharpness_min_degree": at[low]["sharpness"],
                    "sharpness_max_degree": at[high]["sharpness"],
                    "p_max": at[top]["p_max"],
                    "entropy_ratio": at[top]["entropy_ratio"],
                },
            )
        )
    return findings


@check("graph attention", "IC517")
def _graph_attention_check(ctx: CheckContext) -> list[Finding]:
    return graph_attention_findings(ctx.graph, ctx.result, ctx.degree)
