"""Architecture checks with concrete fixes (issue 5): attention logit scale, depth-to-width, recurrence,
dropout. Each names the layer, the numbers, the reason and the fix as a number (docs/theory.md §5-§12)."""

from __future__ import annotations

import math

from initcheck.analysis.attention_scale import attention_scale
from initcheck.analysis.layers import output_spread, width_regime
from initcheck.analysis.symbolic import SymbolicResult
from initcheck.checks import repairs
from initcheck.checks.registry import CheckContext, check
from initcheck.codes import limit
from initcheck.ir import Graph, Node
from initcheck.passes import is_signal
from initcheck.report.model import Finding, Measure
from initcheck.rules.attention import softmax_statistics
from initcheck.rules.common import normalizes


def attention_findings(graph: Graph, result: SymbolicResult) -> list[Finding]:
    """q k^T -> softmax: within-row logit std sigma; sigma >= 2 warns, >= 4 errs (docs/theory.md §9, §13). A missing
    1/sqrt(d_k), in every form it can be written (analysis/attention_scale.py), is an error even when small q/k
    weights hide it at init: the logits grow with sqrt(d_k) as soon as training moves q and k."""
    findings = []
    for node in graph.nodes:
        if node.op != "softmax":
            continue
        scale = attention_scale(node)
        logits = result.forward.get(node.input(0))
        if scale is None or logits is None:
            continue
        sigma = math.sqrt(logits.var)
        shape = node.input(0).shape
        keys = node.attrs.get("size") or (shape[-1] if shape else None) or 1
        if sigma < limit("IC504", "warning") and not scale.missing:
            continue
        findings.append(_attention_finding(node, scale, sigma, int(keys)))
    return findings


def _attention_finding(node: Node, scale, sigma: float, keys: int) -> Finding:
    stats = softmax_statistics(round(sigma, 3), keys)
    d_k = scale.d_k
    if scale.missing:
        reason = (
            f"no 1/sqrt(d_k) scaling of q k^T in any form (d_k = {d_k}: not on the logits, q or k, nor folded "
            f"into q's init; effective scale {scale.effective:.3g})"
        )
        consequence = (
            "the logits grow with sqrt(d_k) as training moves q and k"
            if sigma < limit("IC504", "warning")
            else "the softmax starts saturated"
        )
        fix = f"scale the logits by 1/sqrt(d_k) = {1 / math.sqrt(d_k):.3g} (e.g. the attention's `scaling`)"
        factor = 1 / math.sqrt(d_k)
    else:
        reason = "the q/k projections are too large for their inputs"
        consequence = "the softmax starts saturated"
        fix = (
            f"scale the q and k weights by {1 / math.sqrt(sigma):.3g} each (the logits by {1 / sigma:.3g}) to "
            "reach logit std 1"
        )
        factor = 1 / sigma
    return Finding(
        "IC504",
        "error" if sigma >= limit("IC504", "error") or scale.missing else "warning",
        "attention",
        f"'{node.label}': within-row logit std {sigma:.3g} over {keys} keys: {reason}; {consequence} (expected max "
        f"probability {stats['max_p']:.2f}, entropy {stats['entropy_ratio']:.0%} of ln N now), so its gradient "
        "shrinks and attention locks onto few keys",
        node.name,
        node.scope,
        sigma,
        limit("IC504", "warning"),
        fix + "; the softmax backward grows accordingly",
        factor,
        repair=_logit_repair(scale, factor),
    )


def _logit_repair(scale, factor: float):
    """A missing 1/sqrt(d_k) folded into q's init (the form the scale analysis recognises, as some models ship it);
    logits merely too spread: the factor split evenly over the q and k projections."""
    q, k = scale.q_proj, scale.k_proj
    if q is None or k is None:
        return repairs.unfixable("no q or k projection weight was found to carry the scale")
    if q is k or (q.attrs.get("weight_tensor") and q.attrs.get("weight_tensor") == k.attrs.get("weight_tensor")):
        return repairs.unfixable(
            f"q and k come from one packed projection '{q.label}' (with v): scale its q and k columns, or the logits"
        )
    if scale.missing:
        return repairs.change([repairs.of_node(q, factor)])
    return repairs.change([repairs.of_node(q, math.sqrt(factor)), repairs.of_node(k, math.sqrt(factor))])


_WEIGHTED = {"linear", "conv", "conv_transpose", "matmul"}


def depth_width_findings(graph: Graph, result: SymbolicResult, depth: int, width: int | None) -> list[Finding]:
    """Effective theory (docs/theory.md §12): the instance-to-instance CV^2 of the output second moment; the
    expansion parameter is nu L / n (nu = 5 for ReLU), not L / n. >= 0.5: effectively too deep for its width."""
    found = output_spread(graph, result)
    if found is None or not width:
        return []
    cv2, hidden, value = found
    warn = limit("IC505", "warning")
    if cv2 < warn:
        return []
    typical = math.exp(-math.log1p(cv2) / 2)  # log-normal: the median network's K relative to the preserved mean
    regime = width_regime(cv2)
    return [
        Finding(
            "IC505",
            "warning",
            "finite-width",
            f"depth {depth} at width {width} (L/n = {depth / width:.3g}): the output second moment varies between "
            f"initialisations with CV^2 ~ {cv2:.2f} ({regime}); beyond leading order the spread is log-normal, so a typical "
            f"network keeps ~{typical:.0%} of the ensemble's signal even though the mean is preserved",
            value.producer.name if value.producer else value.name,
            value.producer.scope if value.producer else "",
            cv2,
            warn,
            f"widen the network x{cv2 / warn:.2g} (CV^2 ~ nu L / n, so that brings it to {warn}), or make it "
            f"that much shallower, or add normalisation/residual scaling that resets the spread",
            cv2 / warn,
            measure=Measure("spread", (hidden.name,)),
        )
    ]


def recurrent_findings(graph: Graph, result: SymbolicResult) -> list[Finding]:
    """RNN/LSTM/GRU: the gradient energy from the last step back to the first, r(T - 1), and the per-step factor
    chi it settles at (docs/theory.md §10); per direction, the one furthest out of the healthy band."""
    from initcheck.rules.recurrent import cell_states, sequence_length

    findings = []
    low, high = limit("IC506", "low"), limit("IC506", "high")
    for node in graph.nodes:
        x = result.forward.get(node.input(0)) if node.op in ("rnn", "lstm", "gru") and node.inputs else None
        if x is None:
            continue
        steps = sequence_length(node)
        states = cell_states(node, x.K, max(steps, 50))
        totals = [float(s.decay(steps)[-1]) for s in states]
        worst = max(range(len(states)), key=lambda d: abs(math.log(max(totals[d], 1e-300))))
        state, total, gates = states[worst], totals[worst], node.params["directions"][worst]
        forget = gates[2]["bias_mean"] if node.op == "lstm" else None
        if total < low or total > high:
            findings.append(_recurrent_finding(node, state, total, steps, gates, forget, low if total < low else high))
        elif forget is not None and forget < 1:
            findings.append(
                Finding(
                    "IC506",
                    "info",
                    "recurrent",
                    f"'{node.label}': LSTM forget-gate bias {forget:.2f} < 1: memory of ~{_memory(state.chi):.2g} steps at init",
                    node.name,
                    node.scope,
                    forget,
                    1.0,
                    "forget-gate bias 1 (or chrono init) for long dependencies",
                    1.0,
                )
            )
    return findings


def _memory(chi: float) -> float:
    return -1 / math.log(chi) if 0 < chi < 1 else math.inf


# why a vanishing recurrence is no matter of one weight scale (docs/theory.md §10's measured chi)
_VANISHING_RECURRENCE = (
    "a vanishing recurrence is set by the gates' biases (forget-gate for LSTM, update-gate for GRU) or, in a plain "
    "RNN, by its activation: even an orthogonal W_hh leaves a tanh RNN near chi 0.6 per step, so no rescaling of "
    "the weights holds over a long sequence (a gated cell, a gate-bias init, or truncated backprop)"
)


def _recurrent_finding(node, state, total: float, steps: int, gates: list[dict], forget, threshold: float) -> Finding:
    vanishing = total < threshold
    chi, memory = state.chi, _memory(state.chi)
    candidate = gates[-1]  # the tanh candidate / RNN gate: W_hh's own spectrum
    spectrum = (
        f"; W_hh (candidate) spectral radius {candidate.get('spectral_radius', math.nan):.3g}, spectral norm "
        f"{candidate.get('spectral_norm', math.nan):.3g}, stationary K_h {state.history[-1]:.3g}"
    )
    carry = {"lstm": "the cell state through the forget gate", "gru": "the update gate"}.get(node.op)
    paths = (
        f"per step {state.carry:.3g} stays on {carry} and {state.mixing:.3g} goes through W_hh"
        if carry
        else f"per step {state.mixing:.3g} through W_hh"
    )
    fix = (
        (
            "orthogonal W_hh with gain 1 and a stronger input drive"
            if node.op == "rnn"
            else f"forget/update-gate bias >= 1 (now {forget:.2f}; chrono init for long sequences)"
            if node.op == "lstm"
            else "update-gate bias >= 1"
        )
        if vanishing
        else "reduce W_hh's spectral radius (orthogonal, gain < 1)"
    )
    truncate = max(1, int(memory)) if math.isfinite(memory) else steps
    return Finding(
        "IC506",
        "warning",
        "recurrent",
        f"'{node.label}' ({node.op.upper()}): gradient energy x{total:.3g} from the last of {steps} steps back to the "
        f"first ({paths}; settling at chi = {chi:.3g} per step, memory ~{memory:.3g} steps): gradients "
        f"{'vanish' if vanishing else 'explode'} across the sequence" + spectrum,
        node.name,
        node.scope,
        total,
        threshold,
        fix + f"; or truncate backpropagation to ~{truncate} steps",
        chi,
        repair=repairs.unfixable(_VANISHING_RECURRENCE)
        if vanishing
        else repairs.change(repairs.recurrent(node, 1 / math.sqrt(chi))),
        details={
            "chi": chi,
            "carry": state.carry,
            "mixing": state.mixing,
            "steps": steps,
            "stationary_K": state.history[-1],
            "spectral_radius": candidate.get("spectral_radius", math.nan),
            "spectral_norm": candidate.get("spectral_norm", math.nan),
        },
    )


def dropout_findings(graph: Graph) -> list[Finding]:
    """Inverted dropout multiplies K by 1/(1-p) in training mode and not in eval mode (docs/theory.md §8): along a
    chain of dropout layers the two modes drift apart by prod 1/(1-p)."""
    layers = [
        n
        for n in graph.nodes
        if n.op == "dropout" and n.attrs.get("ratio", 0) > 0 and any(is_signal(v) for v in n.inputs)
    ]
    if not layers:
        return []
    depth: dict[int, float] = {}  # value id -> largest train/eval factor on any path to it
    for node in graph.nodes:
        here = max((depth.get(id(v), 1.0) for v in node.inputs if v is not None), default=1.0)
        if normalizes(node):
            here = 1.0  # a normalisation rescales by the signal's own statistics: the modes agree again
        if node in layers:
            here /= 1 - node.attrs["ratio"]
        for v in node.outputs:
            depth[id(v)] = here
    factor = max((depth.get(id(v), 1.0) for v in graph.outputs), default=1.0)
    if factor <= limit("IC507", "info"):
        return []
    rates = sorted({round(n.attrs["ratio"], 3) for n in layers})
    last = layers[-1]
    return [
        Finding(
            "IC507",
            "warning" if factor >= limit("IC507", "warning") else "info",
            "dropout",
            f"{len(layers)} dropout layer(s) (p = {', '.join(map(str, rates))}): in training mode K is up to x{factor:.3g} "
            "its eval-mode value at the output (inverted dropout: 1/(1-p) per layer on the path), so layers after them "
            "see a different scale in training and evaluation",
            last.name,
            last.scope,
            factor,
            limit("IC507", "info"),
            "expected with inverted dropout; scaling the weights by sqrt(1-p) to keep training mode at 1 shrinks eval "
            f"mode by (1-p) per layer instead (x{1 / factor:.3g} here); keep a normalisation after dropout-heavy blocks",
            factor,
        )
    ]


@check("attention", "IC504")
def _attention_check(ctx: CheckContext) -> list[Finding]:
    return attention_findings(ctx.graph, ctx.result)


@check("depth-to-width", "IC505")
def _depth_to_width_check(ctx: CheckContext) -> list[Finding]:
    return depth_width_findings(ctx.graph, ctx.result, ctx.depth, ctx.width)


@check("recurrence", "IC506")
def _recurrence_check(ctx: CheckContext) -> list[Finding]:
    return recurrent_findings(ctx.graph, ctx.result)


@check("dropout", "IC507")
def _dropout_check(ctx: CheckContext) -> list[Finding]:
    return dropout_findings(ctx.graph)
