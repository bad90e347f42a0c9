"""Elementwise functions of one tensor: every activation and every fused chain (docs/theory.md §4).

Forward: m = <phi>, K = <phi^2>, M by two-level quadrature over channel offsets; backward:
G_x = <phi'^2> G_y. Exact for Gaussian inputs (Gaussian closure otherwise).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from initcheck import gaussian, pointwise
from initcheck.gaussian import moments_of
from initcheck.moments import Moments, clean, profile_along
from initcheck.pointwise import never_negative, rounded
from initcheck.rules import entry_law, rectified
from initcheck.rules.common import map_grid, map_scales, marginal_profiles, scaled_entries
from initcheck.rules.pool import argmax_slope_ratio
from initcheck.rules.registry import backward_rule, forward_rule

_HOMOGENEOUS = {"relu", "leaky_relu", "identity", "neg", "abs"}


@lru_cache(maxsize=65536)
def _pointwise_moments(program, m: float, K: float, M: float) -> tuple[float, float, float, float]:
    return moments_of(pointwise.as_function(program), m, K, M, pointwise.kinks(program))


_TINY = 1e-20  # below this K the quadrature's scale is degenerate (and a central difference too coarse)


def program_moments(program, x: Moments) -> tuple[float, float, float, float]:
    if x.units:
        return _over_units(program, x)
    if 0 < x.K < _TINY and pointwise.positively_homogeneous(program):
        # tiny signals (denormal weights, a vanishing net): exact by rescaling to unit K
        scale = x.K**0.5
        mean, K, M, grad = _pointwise_moments(program, rounded(x.m / scale), 1.0, rounded(x.M / x.K))
        return mean * scale, K * x.K, M * x.K, grad
    return _pointwise_moments(program, rounded(x.m), rounded(x.K), rounded(x.M))


def _over_units(program, x: Moments) -> tuple[float, float, float, float]:
    """The moments over a few units whose means a_k are known (Moments.units): each unit's own, with the rest of
    the offsets (M less the mean a_k^2) Gaussian around a_k and the noise K - M, averaged over the units. A
    squeeze-excitation's 10 SiLU units: K 1.76x the measurement with Gaussian offsets, within 1% with the units'
    (docs/theory.md §4)."""
    units = np.asarray(x.units, dtype=float)
    spread = max(x.M - float(np.mean(units * units)), 0.0)
    noise = max(x.K - x.M, 0.0)
    per_unit = [
        _pointwise_moments(program, rounded(a), rounded(a * a + spread + noise), rounded(a * a + spread)) for a in units
    ]
    mean, K, M, slope_sq = (float(v) for v in np.mean(per_unit, axis=0))
    return mean, K, M, slope_sq


def _positive_share(program, x: Moments) -> float | None:
    """P(phi(z) > 0) for z of x's law, or Gaussian, where phi is never negative; else None."""
    if x.law is not None and x.var > 0:
        return entry_law.mapped(program, rounded(x.m), rounded(x.var), x.law).positive
    return _gaussian_positive_share(program, rounded(x.m), rounded(x.var))


@lru_cache(maxsize=4096)
def _gaussian_positive_share(program, m: float, v: float) -> float | None:
    """P(phi(z) > 0) for z ~ N(m, v) where phi is never negative, else None."""
    if not never_negative(program):
        return None
    grid, density = gaussian.fine_grid()
    with np.errstate(all="ignore"):
        return float(density @ (pointwise.as_function(program)(m + np.sqrt(max(v, 0.0)) * grid) > 0))


@lru_cache(maxsize=1024)
def _slope_at_zero_and_positives(program) -> float | None:
    """phi(z) = z for z > 0 (ReLU, leaky ReLU): phi'(0)^2 as autograd takes it (the left slope), else None."""
    fn = pointwise.as_function(program)
    z = np.linspace(1e-3, 20.0, 201)
    with np.errstate(all="ignore"):
        if not np.allclose(fn(z), z, rtol=0, atol=1e-12):
            return None
        return float(((fn(np.float64(-1e-3)) - fn(np.float64(0.0))) / -1e-3) ** 2)


def kills_zeros(program) -> bool:
    """A ReLU: the identity on positives whose gradient is 0 at 0 (autograd's convention)."""
    return _slope_at_zero_and_positives(program) == 0.0


def _unchanged_gradient(program, x: Moments) -> float | None:
    """On a nonnegative input an identity-on-positives function changes nothing forward; backward it passes the
    positive entries whole and the zeros at its slope at 0. None where that does not apply."""
    if x.positive is None:
        return None
    slope_sq = _slope_at_zero_and_positives(program)
    return None if slope_sq is None else x.positive + (1 - x.positive) * slope_sq


@lru_cache(maxsize=4096)
def _rectified_moments(program, m: float, var: float, offset: float) -> tuple[float, float, float]:
    """Mean, second moment and E[phi'^2] of phi(y), y of mean m and variance var an affine map of relu(offset + g),
    g ~ N(0, 1): a batch norm of a ReLU's output (docs/theory.md §4)."""
    mu, sd_r = _rectified(offset)
    sd = math.sqrt(max(var, 0.0))
    fn = pointwise.as_function(program)
    # where y crosses phi's kinks, in g
    crossings = [mu + (k - m) * sd_r / sd - offset for k in pointwise.kinks(program) if sd > 0]
    g, w = gaussian.nodes(0.0, 1.0, [-offset, *(c for c in crossings if c > -offset)])
    y = m + sd * (np.maximum(offset + g, 0.0) - mu) / sd_r
    with np.errstate(all="ignore"):
        values, vw = gaussian.defined(fn(y), w)
        slopes, sw = gaussian.defined(gaussian.derivative(fn, y), w)
    return float(vw @ values), float(vw @ values**2), float(sw @ slopes**2)


def zeros_land_below(x: Moments) -> bool:
    """For entries that are an affine map of a ReLU's output: whether its zeros land below 0, so that a ReLU there
    passes no gradient to them (a batch norm of a ReLU's output, DenseNet's norm-ReLU)."""
    if x.rectified is None or x.gaussian or x.var <= 0:
        return False
    offset = x.rectified[1]
    mu, sd_r = _rectified(offset)
    return x.m - math.sqrt(x.var) * mu / sd_r < 0  # where relu(offset + g) = 0 lands


def _rectified(offset: float) -> tuple[float, float]:
    """Mean and standard deviation of relu(offset + g), g ~ N(0, 1)."""
    cdf, pdf = 0.5 * (1 + math.erf(offset / math.sqrt(2))), math.exp(-offset * offset / 2) / math.sqrt(2 * math.pi)
    mu = offset * cdf + pdf
    return mu, math.sqrt(max((offset * offset + 1) * cdf + offset * pdf - mu * mu, 1e-300))


def _mixed(program, x: Moments, gaussian_part: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """The activation's moments over a mixture of Gaussian entries and rectified ones (their share, x.rectified),
    or over the entries' law where a sum made one (a residual stream, x.law)."""
    mean, K, M, grad = gaussian_part
    if x.var <= 0 or (x.law is None and (x.rectified is None or x.gaussian)):
        return gaussian_part
    if x.law is not None:
        share = 1.0
        over = entry_law.mapped(program, rounded(x.m), rounded(x.var), x.law)
        r_mean, r_K, r_grad = over.mean, over.K, over.slope_sq
    else:
        assert x.rectified is not None
        share, offset = x.rectified
        r_mean, r_K, r_grad = _rectified_moments(program, rounded(x.m), rounded(x.var), round(offset, 3))
    mixed_mean = (1 - share) * mean + share * r_mean
    mixed_K = (1 - share) * K + share * r_K
    # the channels' common offset moves with the mean
    mixed_M = min(max(M + mixed_mean**2 - mean**2, mixed_mean**2), mixed_K)
    return mixed_mean, mixed_K, mixed_M, (1 - share) * grad + share * r_grad


_MAP_POSITIONS = 1 << 22  # beyond this many positions a map's profile is dropped (held whole, 4 values each)
_MAP_SCALES = 33  # energies at which phi's moments are computed across a map's range


_Profile = tuple[np.ndarray, ...] | None


def _over_map(program, x: Moments) -> tuple[tuple[float, float, float, float], _Profile, _Profile] | None:
    """The activation's moments over a feature map whose energy varies from position to position (zero padding's
    profile, docs/theory.md §2): each position's entries have their own second moment K e(p), and phi is not
    homogeneous, so the map's K is the mean of phi's K over the positions, not phi's K at their mean, and the
    output's profile is phi's K at each position (a deep stack of padded depthwise convs leaves a 7x7 map's
    corner with 1/6 of its centre's energy). Returns ((mean, K, M, E[phi'^2]), output profile, output mean
    profile), or None where the map is even or the entries are rectified. Entries of a law (a depthwise conv's
    skewed sums) keep it at every position."""
    at = _map_moments(program, x)
    if at is None:
        return None
    mean, K, M, slope_sq = (float(v) for v in at.reshape(-1, 4).mean(axis=0))
    if not K > 0:
        return None
    # a channel's mean over the map: the position means vary over it (that part is variance to a batch norm),
    # and only the offsets between channels are coherent beyond the mean's square
    offsets = float((at[..., 2] - at[..., 0] ** 2).mean())
    totals = (mean, K, mean * mean + max(offsets, 0.0), slope_sq)
    return totals, marginal_profiles(at[..., 1]), marginal_profiles(at[..., 0])


def _map_slopes(program, x: Moments, gradient: tuple[np.ndarray, ...] | None):
    """E[phi'^2] over such a map, each position weighed by the output gradient's relative energy there (the
    conv after it sends its border less): where both peak at the centre, more than the product of their means.
    Returns (that, the input gradient's per-axis map) or None."""
    at = _map_moments(program, x)
    if at is None:
        return None
    passed = at[..., 3]
    if (
        gradient is not None
        and len(gradient) == passed.ndim
        and all(len(g) == n for g, n in zip(gradient, passed.shape))
    ):
        passed = passed * map_grid(gradient)
    total = float(passed.mean())
    if not total > 0:
        return None
    return total, marginal_profiles(passed)


def _map_moments(program, x: Moments) -> np.ndarray | None:
    """(positions..., 4): phi's mean, K, M and E[phi'^2] at each position of a map whose energy varies."""
    if not x.profile or (x.rectified is not None and not x.gaussian) or x.K <= 0:
        return None
    if np.prod([len(p) for p in x.profile]) > _MAP_POSITIONS:
        return None
    energy = map_grid(x.profile)
    means = _mean_grid(program, x, energy.shape)
    if means is not None:
        # phi(a z) = a phi(z): a position whose mean is u times the map's and energy e times is a position of energy
        # e / u^2 and the map's mean, scaled by u
        energy = energy / (means * means)
    low, high = float(energy.min()), float(energy.max())
    if not low > 0:
        return None
    # phi's moments are smooth in the log of the scale: computed at _MAP_SCALES points across the map's range and
    # interpolated there (a 512x512 map has thousands of distinct energies)
    scales = map_scales(low, high, _MAP_SCALES)
    if program[0] in _HOMOGENEOUS:
        # phi(a z) = a phi(z): of a zero-mean input the moments scale exactly; with a mean, their ratio to the
        # energy's powers varies slowly with the mean's share of the energy, read at a few points
        exact = x.m == 0 and x.M <= 0 and x.law is None and x.rectified is None
        scales = np.array([1.0]) if exact else scales[:: (_MAP_SCALES - 1) // 4]
    per_scale = np.array(
        [_mixed(program, xs, program_moments(program, xs)) for xs in (scaled_entries(x, s) for s in scales)]
    )
    if len(scales) == 1:
        at = np.broadcast_to(per_scale[0], energy.shape + (4,)) * _units(energy / scales[0])
    else:
        # interpolated as the mean over sqrt(scale) and the energies over the scale, which vary slowly
        logs, relative = np.log(energy), per_scale / _units(scales)
        at = np.stack([np.interp(logs, np.log(scales), relative[:, j]) for j in range(4)], axis=-1) * _units(energy)
    return at if means is None else at * _units(means * means)


def _mean_grid(program, x: Moments, shape) -> np.ndarray | None:
    """The input's relative mean at each position where it varies over the map and phi is homogeneous (a ReLU
    after a residual sum whose stream's mean is lower at the border); None otherwise."""
    if program[0] not in _HOMOGENEOUS or x.mean_profile is None or not x.m > 0:
        return None
    grid = map_grid(x.mean_profile)
    return grid if grid.shape == shape and np.all(grid > 0) else None


def _units(scale: np.ndarray) -> np.ndarray:
    """How the mean, K, M and E[phi'^2] of a homogeneous function grow with the energy: sqrt, linear, linear, 1."""
    return np.stack([np.sqrt(scale), scale, scale, np.ones_like(scale)], axis=-1)


@forward_rule("pointwise")
def pointwise_forward(node, ins, ctx):
    x = ins[0]
    program = node.attrs["program"]
    if _unchanged_gradient(program, x) is not None:
        return x
    keeps_profile = program[0] in _HOMOGENEOUS
    mapped = None if program[0] in ("identity", "neg") else _over_map(program, x)
    if mapped is None:
        mean, K, M, _ = _mixed(program, x, program_moments(program, x))
        profile = x.profile if keeps_profile else None
    elif keeps_profile:
        # a ReLU's K and slopes follow the map's energy exactly; its mean follows each position's spread as the
        # square root, so the map's mean is below the mean at the map's energy (docs/theory.md §2)
        K = _mixed(program, x, program_moments(program, x))[1]
        (mean, _, M, _), profile = mapped[0], x.profile
    else:
        (mean, K, M, _), profile, _ = mapped
    means = mapped[2] if mapped is not None else (x.mean_profile if keeps_profile else None)
    return clean(
        mean,
        K,
        M,
        x.exact and x.gaussian,
        S=program_moments(program, x.with_(M=x.S))[2] if x.S is not None else None,
        profile=profile,
        mean_profile=means if profile is not None else None,
        gaussian=program[0] in ("identity", "neg"),
        positive=_positive_share(program, x),
    )


@backward_rule("pointwise")
def pointwise_backward(node, ins, outs, grads, ctx):
    _state_aligned_gradient(node, ins[0], grads[0], ctx)
    program = node.attrs["program"]
    # the part of the gradient that is already 0 wherever this ReLU's slope is passes whole
    supported = ctx.supported_share(node.outputs[0]) if kills_zeros(program) else 0.0
    if supported >= 1.0:
        return [grads[0]]
    weighted = min(ctx.backward_weighted.pop(node.outputs[0], 0.0), grads[0])
    if (share := _unchanged_gradient(program, ins[0])) is None:
        gradient_map = ctx.backward_map.get(node.outputs[0])
        mapped = None if program[0] in _HOMOGENEOUS else _map_slopes(program, ins[0], gradient_map)
        if mapped is not None:
            grad_sq = mapped[0]
            ctx.stated_map[node] = [mapped[1]]
        else:
            grad_sq = _mixed(program, ins[0], program_moments(program, ins[0]))[3]
        grad_sq = _per_part_slopes(node, ins[0], grad_sq, ctx)
        weighting = entry_law.slope_weighting(outs[0], ctx.backward_law.get(node.outputs[0]))
        share = grad_sq * weighting * argmax_slope_ratio(node, ctx)
    # the part of the gradient that lies where the output deviates most meets the slopes there
    kept = (grads[0] - weighted) * share + weighted * deviation_slope(program, ins[0])
    return [grads[0] * supported + (1 - supported) * kept]


def deviation_slope(program, x: Moments) -> float:
    """E[phi'(z)^2 (phi(z) - E phi)^2] / Var phi(z), z ~ N(m, var): the slope a gradient meets that is spread over
    the output's entries as their squared deviation (docs/theory.md §4)."""
    if x.var <= 0:
        return 0.0
    fn = pointwise.as_function(program)
    sd = math.sqrt(x.var)
    z, w = gaussian.nodes(rounded(x.m), sd, pointwise.kinks(program))
    with np.errstate(all="ignore"):
        values = fn(z)
        f, fw = gaussian.defined(values, w)
        mean = float(np.dot(fw, f))
        met, mw = gaussian.defined(gaussian.derivative(fn, z) ** 2 * (values - mean) ** 2, w)
    spread = float(np.dot(fw, (f - mean) ** 2))
    return float(np.dot(mw, met)) / spread if spread > 0 else 0.0


def slope_curvature(program, x: Moments) -> float:
    """E[phi'(z)^2 (y^2 - 1)] / (2 E[phi'(z)^2]), y the standardised input, z ~ N(m, var): how fast the mean
    squared slope grows as a part b of the input is held fixed, E[phi'^2 | b] = E[phi'^2] (1 + this b^2 / var)
    to second order. 0 for a centred ReLU (its slope's square is a step); a hard-swish's grows with z^2 (docs/theory.md
    §4)."""
    if x.var <= 0:
        return 0.0
    m, var = rounded(x.m), rounded(x.var)
    return _curvature(program, m, var)


@lru_cache(maxsize=65536)
def _curvature(program, m: float, var: float) -> float:
    fn = pointwise.as_function(program)
    sd = math.sqrt(var)
    z, w = gaussian.nodes(m, sd, pointwise.kinks(program))
    with np.errstate(all="ignore"):
        squared, sw = gaussian.defined(gaussian.derivative(fn, z) ** 2, w)
        bent, bw = gaussian.defined(gaussian.derivative(fn, z) ** 2 * (((z - m) / sd) ** 2 - 1), w)
    energy = float(np.dot(sw, squared))
    return float(np.dot(bw, bent)) / (2 * energy) if energy > 0 else 0.0


def _per_part_slopes(node, x: Moments, grad_sq: float, ctx) -> float:
    """E[phi'^2] where the rectified entries are whole channels (a norm of DenseNet's concatenation): each channel
    passes its part's own share of the gradient (a rectified one 34.5% through a ReLU, a Gaussian one 50%), which
    the input's gradient profile over the channels states; weighted by the output's gradient over them."""
    if x.rectified is None or x.gaussian or x.law is not None or x.var <= 0 or not 0.0 < x.rectified[0] < 1.0:
        return grad_sq
    mask = rectified.channel_mask(node.inputs[0], ctx.forward)
    if mask is None:
        return grad_sq
    program = node.attrs["program"]
    plain = program_moments(program, x)[3]
    rectified_part = _rectified_moments(program, rounded(x.m), rounded(x.var), round(x.rectified[1], 3))[2]
    slopes = np.where(mask, rectified_part, plain)
    out = ctx.backward_axial.get(node.outputs[0])
    weights = out.energy if out is not None and out.axis == 1 and len(out.energy) == len(mask) else 1.0
    received = slopes * weights
    if received.mean() <= 0:
        return grad_sq
    ctx.stated_axial[node] = [profile_along(1, received / received.mean())]
    return float(received.mean())


def shared_gradient_share(node, x: Moments, ctx) -> float:
    """Of a gradient that is the same at every position of a sample, the share that stays so behind this
    activation: E_s[(E_e phi'(s + e))^2] / E[phi'^2] with s the input's part shared by those positions (S) and e
    the rest. A ReLU's mask differs from pixel to pixel, so a broadcast gradient (global pooling's) leaves it half
    shared, not whole, and a batch norm behind it subtracts less as the batch mean (docs/theory.md §6)."""
    program = node.attrs["program"]
    supported = ctx.supported_share(node.outputs[0]) if kills_zeros(program) else 0.0
    if x is None or supported >= 1.0 or x.rectified is not None or _unchanged_gradient(program, x) is not None:
        return 1.0
    return supported + (1 - supported) * _slope_share(program, rounded(x.m), rounded(x.K), rounded(x.shared))


def _state_aligned_gradient(node, x: Moments | None, g: float, ctx) -> None:
    """The part of the input gradient that a batch norm before this activation removes as its projection on the
    normalised signal, mean(dy x^) over the batch: where the output gradient is the same at every position of a
    sample (u_n), dy x^ averages to E[x^ phi'(x)] u_n, of energy E[x^ phi'(x)]^2 G_s per sample (a ReLU:
    phi(0)^2 = 0.16 of it), which the norm divides by its batch (docs/theory.md §6)."""
    shared = min(ctx.backward_shared.get(node.outputs[0], 0.0), g)
    if x is None or shared <= 0 or x.var <= 0 or x.positive is not None or x.rectified is not None:
        return
    value = node.inputs[0]
    aligned = _signal_slope(node.attrs["program"], rounded(x.m), rounded(x.var)) ** 2 * shared
    ctx.backward_aligned[value] = ctx.backward_aligned.get(value, 0.0) + aligned


@lru_cache(maxsize=65536)
def _slope_statistics(program, m: float, var: float) -> tuple[float, float, float, float]:
    """For z ~ N(m, var): E[phi'(z)], E[(z - m)/sd phi'(z)], E[phi'(z)^2] and Var(phi(z)), on one set of nodes."""
    fn = pointwise.as_function(program)
    sd = math.sqrt(max(var, 0.0))
    z, w = gaussian.nodes(m, sd, pointwise.kinks(program))
    with np.errstate(all="ignore"):
        f, fw = gaussian.defined(fn(z), w)
        d, dw = gaussian.defined(gaussian.derivative(fn, z), w)
    standard = (z - m) / sd if sd > 0 else np.zeros_like(z)
    spread = float(np.dot(fw, f * f) - np.dot(fw, f) ** 2)
    return float(np.dot(dw, d)), float(np.dot(dw, standard * d)), float(np.dot(dw, d * d)), spread


def slope_covariation(program, x: Moments) -> float:
    """E[y phi'(z)]^2 / E[phi'(z)^2], y the standardised input: the share of the slope's energy that moves with its
    input (its first Hermite weight; a ReLU on a centred input: 1/pi). Two entries whose inputs correlate by r have
    slopes that correlate by this share times r."""
    if x.var <= 0:
        return 0.0
    _, moving, grad_sq, _ = _slope_statistics(program, rounded(x.m), rounded(x.var))
    return moving**2 / grad_sq if grad_sq > 0 else 0.0


def mean_slope(program, x: Moments) -> float:
    """E[phi'(z)] over x's entries (its law where a sum made one, else Gaussian): how a small shift of the input
    moves the output's mean."""
    if x.law is not None and x.var > 0:
        return entry_law.mapped(program, rounded(x.m), rounded(x.var), x.law).slope
    return _slope_statistics(program, rounded(x.m), rounded(x.var))[0]


def _signal_slope(program, m: float, var: float) -> float:
    """E[(z - m)/sd phi'(z)] for z ~ N(m, var)."""
    return _slope_statistics(program, m, var)[1]


def correlation_kept(program, m: float, var: float) -> float:
    """a1^2 / Var(phi(z)) for z ~ N(m, var), a1 = E[phi'(z)] sd: the share of a small correlation between two
    inputs that survives the activation (its first Hermite weight; a ReLU: 0.73)."""
    if var <= 0:
        return 1.0
    mean_slope, _, _, spread = _slope_statistics(program, rounded(m), rounded(var))
    return min(mean_slope**2 * var / spread, 1.0) if spread > 0 else 1.0


@lru_cache(maxsize=65536)
def _slope_share(program, m: float, K: float, shared: float) -> float:
    mean_slope, _, grad_sq, _ = _slope_statistics(program, m, max(K - m * m, 0.0))
    if not grad_sq > 0:
        return 1.0
    fn = pointwise.as_function(program)

    def slope(z):
        return gaussian.derivative(fn, z)

    with np.errstate(all="ignore"):
        coherent = gaussian.coherent_energy(slope, m, K, shared, mean_slope)
    return min(max(coherent / grad_sq, 0.0), 1.0) if math.isfinite(coherent) else 1.0


def _prelu_programs(node):
    """PReLU with per-channel slopes a_c: the mean is linear in a, K and phi'^2 are linear in a^2
    (docs/theory.md §4, LeakyReLU closed form), so slopes mean(a) and sqrt(mean(a^2)) give exact moments."""
    slope = node.params["slope"]
    mean_prog = pointwise.unary("leaky_relu", alpha=slope.mean)
    sq_prog = pointwise.unary("leaky_relu", alpha=slope.mean_sq**0.5)
    return mean_prog, sq_prog


@forward_rule("prelu")
def prelu_forward(node, ins, ctx):
    x = ins[0]
    mean_prog, sq_prog = _prelu_programs(node)
    mean, _, M, _ = program_moments(mean_prog, x)
    _, K, _, _ = program_moments(sq_prog, x)
    return clean(mean, K, M, x.exact and x.gaussian, profile=x.profile, gaussian=False)


@backward_rule("prelu")
def prelu_backward(node, ins, outs, grads, ctx):
    _, sq_prog = _prelu_programs(node)
    return [grads[0] * program_moments(sq_prog, ins[0])[3]] + [None] * (len(ins) - 1)
