"""Recurrent layers: per-step mean-field iteration of the hidden second moment (docs/theory.md §10).

Weights enter through their statistics: c = H E[W_hh^2] (recurrent gain), the input gain
n_in E[W_ih^2], and per-gate bias moments. Tied weights over time make these approximations.
"""

from __future__ import annotations

import numpy as np

from initcheck import pointwise
from initcheck.gaussian import moments_of
from initcheck.moments import clean
from initcheck.rules.common import dim
from initcheck.rules.registry import backward_rule, forward_rule

_TANH = pointwise.as_function(pointwise.unary("tanh"))
_SIGMOID = pointwise.as_function(pointwise.unary("sigmoid"))


def _gate(fn, K_pre: float, bias_mean: float):
    """Moments (mean, E x^2, E x'^2) of fn(a), a ~ N(bias_mean, K_pre - bias_mean^2)."""
    mean, second, _, grad = moments_of(fn, bias_mean, max(K_pre, bias_mean**2), bias_mean**2)
    return mean, second, grad


def _preactivation(gate: dict, K_x: float, K_h: float) -> float:
    return gate["in_gain"] * K_x + gate["rec_gain"] * K_h + gate["bias_sq"]


def run_mean_field(kind: str, gates: list[dict], K_x: float, steps: int) -> tuple[list[float], float, float]:
    """Hidden second moment after each step, the per-step gradient factor at the last step, and the
    input-path factor: E[(dh/d candidate pre-activation)^2] at the last step."""
    K_h, K_c, history, chi, drive = 0.0, 0.0, [], 0.0, 0.0
    for _ in range(max(steps, 1)):
        pre = [_preactivation(g, K_x, K_h) for g in gates]
        if kind == "rnn":
            _, K_h_new, d = _gate(_TANH, pre[0], gates[0]["bias_mean"])
            chi, drive = gates[0]["rec_gain"] * d, d
        elif kind == "lstm":  # ONNX gate order: i, o, f, c
            _, i2, _ = _gate(_SIGMOID, pre[0], gates[0]["bias_mean"])
            _, o2, _ = _gate(_SIGMOID, pre[1], gates[1]["bias_mean"])
            _, f2, _ = _gate(_SIGMOID, pre[2], gates[2]["bias_mean"])
            _, g2, dg = _gate(_TANH, pre[3], gates[3]["bias_mean"])
            K_c = f2 * K_c + i2 * g2
            _, t2, dt = _gate(_TANH, K_c, 0.0)
            K_h_new, chi, drive = o2 * t2, f2, o2 * dt * i2 * dg
        else:  # gru, ONNX gate order: z, r, h
            _, z2, _ = _gate(_SIGMOID, pre[0], gates[0]["bias_mean"])
            z_mean, _, _ = _gate(_SIGMOID, pre[0], gates[0]["bias_mean"])
            _, r2, _ = _gate(_SIGMOID, pre[1], gates[1]["bias_mean"])
            pre_n = gates[2]["in_gain"] * K_x + gates[2]["rec_gain"] * r2 * K_h + gates[2]["bias_sq"]
            _, n2, dn = _gate(_TANH, pre_n, gates[2]["bias_mean"])
            one_minus_z2 = 1 - 2 * z_mean + z2
            K_h_new, chi, drive = one_minus_z2 * n2 + z2 * K_h, z2, one_minus_z2 * dn
        K_h = K_h_new
        history.append(K_h)
    return history, chi, drive


@forward_rule("rnn", "lstm", "gru", approximate=True)
def recurrent_forward(node, ins, ctx):
    x = ins[0]
    steps = node.attrs.get("steps") or dim(node.inputs[0], 0) or 1
    history, _, _ = run_mean_field(node.attrs["kind"], node.params["gates"], x.K, steps)
    sequence = clean(0.0, float(np.mean(history)), 0.0, False, gaussian=False)
    last = clean(0.0, history[-1], 0.0, False, gaussian=False)
    outputs = [sequence, last, last][: len(node.outputs)]
    return outputs


@backward_rule("rnn", "lstm", "gru")
def recurrent_backward(node, ins, outs, grads, ctx):
    """Input gradient through the candidate path of one step: G_x ~ (fan_out E[W_ih^2]) drive G_h.
    The other gates' paths and the recurrence over time are left out (an approximation)."""
    gates = node.params["gates"]
    steps = node.attrs.get("steps") or dim(node.inputs[0], 0) or 1
    _, _, drive = run_mean_field(node.attrs["kind"], gates, ins[0].K, steps)
    g = sum(x for x in grads if x is not None)
    return [g * gates[-1]["in_fan_out_gain"] * drive] + [None] * (len(ins) - 1)
