"""Finite-width spread of the forward second moment (docs/theory.md §12), kept in one place.

The rules are exact in expectation over weight draws; one network at width n deviates. Following the
vertex recursion, V_{l+1} = chi_par^2 V_l + (cross-input 4-point excess) / n:
- an activation maps K deterministically, so the relative spread scales by the elasticity
  e = d ln<phi^2> / d ln K (1 for ReLU);
- a weighted layer adds the cross-input excess E[phi_a^2 phi_b^2]/<phi^2>^2 - 1 of its input over its
  effective width (zero for independent inputs, 5 for ReLU as inputs become fully correlated), and
  2 / C_out from averaging over few output units of correlated inputs;
- a normalisation fixes K per instance and resets the spread.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from initcheck import pointwise
from initcheck.gaussian import coherent_energy, moments_of
from initcheck.ir import Node
from initcheck.moments import Moments
from initcheck.passes import reaches
from initcheck.rules.common import normalizes

_RESETS = {"softmax", "log_softmax"}
_WEIGHTED = {"linear", "conv", "conv_transpose"}


def _correlation(x: Moments) -> float:
    var = x.K - x.m**2
    return min(max((x.M - x.m**2) / var, 0.0), 1.0) if var > 0 else 0.0


@lru_cache(maxsize=65536)
def _activation_terms(program, m: float, K: float, M: float) -> tuple[float, float]:
    """(elasticity of <phi^2> in K, cross-input excess of phi)."""
    fn = pointwise.as_function(program)
    kinks = pointwise.kinks(program)
    _, second, _, _ = moments_of(fn, m, K, M, kinks)
    if second <= 0:
        return 0.0, 0.0
    h = 1e-3
    _, up, _, _ = moments_of(fn, m, K * (1 + h), M * (1 + h), kinks)
    _, down, _, _ = moments_of(fn, m, K * (1 - h), M * (1 - h), kinks)
    elasticity = (math.log(max(up, 1e-300)) - math.log(max(down, 1e-300))) / (math.log(1 + h) - math.log(1 - h))
    square = lambda z: fn(z) ** 2  # noqa: E731
    cross = coherent_energy(square, m, K, M, second) / second**2 - 1
    return float(elasticity), max(float(cross), 0.0)


def _units(node: Node) -> tuple[int, int]:
    """(effective input width, output units) of a weighted layer."""
    w = node.params["weight"]
    if node.op == "linear":
        return max(w.fan_in, 1), max(w.fan_out, 1)
    taps = int(np.prod(node.attrs["kernel"]))
    channels_in = (
        max(w.fan_in // taps, 1)
        if node.op == "conv"
        else max(round(w.fan_in * np.prod(node.attrs["strides"]) / taps), 1)
    )
    # convs: effective width between C and C k^2 (docs/theory.md §12: ~2.3 C for 3x3)
    n_eff = channels_in * max(1.0, math.sqrt(taps) / 1.3)
    c_out = w.fan_out // taps * node.attrs.get("groups", 1) if node.op == "conv" else w.fan_out // taps
    return int(n_eff), max(c_out, 1)


def _sum_spread(node: Node, ins: list[Moments | None]) -> float:
    """CV^2 of a sum's K. Independent terms: sum (K_i / K)^2 s_i. A residual add x + f(x): f's K is x's times a
    gain of its own, so x's deviation passes whole and f adds only its own part (K_f / K)^2 (s_f - s_x); summing
    them as independent shrinks the stream's spread block by block (measured: a 12-block residual MLP deviates
    x2.5 from the ensemble where the independent sum predicted 25%)."""
    terms = [(v, m) for v, m in zip(node.inputs, ins) if v is not None and m is not None]
    total = sum(m.K for _, m in terms) or 1.0
    if len(terms) == 2:
        (a, ma), (b, mb) = terms
        skip, branch = (ma, mb) if reaches(b, a) else (mb, ma) if reaches(a, b) else (None, None)
        if skip is not None and branch is not None:
            return skip.spread + (branch.K / total) ** 2 * max(branch.spread - skip.spread, 0.0)
    return sum((m.K / total) ** 2 * m.spread for _, m in terms)


def with_spread(node: Node, ins: list[Moments | None], out: Moments) -> Moments:
    signal = [m for m in ins if m is not None]
    if not signal or node.op in _RESETS:
        return out.with_(spread=0.0, cross=0.0)
    if normalizes(node):  # the scale is reset; a component shared by all inputs (e.g. a bias pattern) is not
        return out.with_(spread=0.0, cross=2 * _correlation(out) ** 2)
    x = signal[0]
    if node.op in _WEIGHTED:
        n_eff, c_out = _units(node)
        correlated = _correlation(x) if x.cross > 0 else 0.0
        spread = x.spread + x.cross / n_eff + 2.0 * correlated / c_out
        return out.with_(spread=spread, cross=2 * _correlation(out) ** 2)
    if node.op == "pointwise":
        elasticity, cross = _activation_terms(node.attrs["program"], *(float(f"{v:.8g}") for v in (x.m, x.K, x.M)))
        return out.with_(spread=elasticity**2 * x.spread, cross=cross)
    if node.op in ("add", "sub", "sum") and len(signal) > 1:
        return out.with_(spread=_sum_spread(node, ins), cross=max(m.cross for m in signal))
    if node.op == "matmul" and len(ins) > 1 and ins[0] is not None and ins[0].simplex and ins[1] is not None:
        return out.with_(spread=max(m.spread for m in signal) + _shared_spread(node, ins[1], out), cross=x.cross)
    return out.with_(spread=max(m.spread for m in signal), cross=max(m.cross for m in signal))


def _shared_spread(node: Node, values: Moments, out: Moments) -> float:
    """What attention passes is mostly the part its values share over the tokens (docs/theory.md §9): the mean
    over C channels of their squared offsets, which one network draws with a relative variance of 2 / C (a UNet's
    64-channel attention: ~18%), carried into the output in proportion to that part's share of it."""
    shape = node.input(1).shape
    if shape is None or len(shape) < 2 or out.K <= 0:
        return 0.0
    dims = [int(d) for d in shape if d is not None]
    if len(dims) != len(shape):
        return 0.0
    channels = math.prod(dims[1:-2]) * dims[-1]  # heads x head size, or the features
    return (values.shared / out.K) ** 2 * 2.0 / max(channels, 1)
