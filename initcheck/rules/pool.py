"""Pooling, up-sampling and reductions (docs/theory.md §7, §11)."""

from __future__ import annotations

import numpy as np

from initcheck import pointwise
from initcheck.gaussian import nodes, standard_cdf
from initcheck.limits import MAX_PROFILE_LENGTH
from initcheck.moments import Moments, clean, normalize_profile
from initcheck.rules.common import (
    conv_profile,
    map_scales,
    marginal_profiles,
    nearest_factors,
    scaled_entries,
    spatial_lengths,
    taps_inside,
    window_axes,
    window_entries,
)
from initcheck.rules.dispersion import pooled_pattern
from initcheck.rules.neighbours import pooled_variance, shared_maximum_excess
from initcheck.rules.registry import backward_rule, forward_rule

_MONOTONE = {"relu", "leaky_relu", "identity", "tanh", "sigmoid", "hard_sigmoid", "softplus", "elu", "selu", "celu"}


def _window(node) -> int:
    return int(np.prod(node.attrs["kernel"]))


def _pool_profile(node, x: Moments):
    profile = conv_profile(x.profile, window_axes(node))
    return normalize_profile(profile) if x.profile else None


@forward_rule("avg_pool", approximate=True)
def avg_pool_forward(node, ins, ctx):
    """K = M + (K - M)/A for independent positions; where neighbours co-vary, the window keeps
    sum_{t,t'} rho(t - t') / A^2 of the variance (docs/theory.md §7)."""
    x = ins[0]
    axes = window_axes(node)
    kept = pooled_variance(x.neighbours, axes) if axes is not None else 1.0 / _window(node)
    pattern = pooled_pattern(node, x)  # the channel means' variation over the map pools as itself, not as noise
    if pattern is None:
        K = x.M + (x.K - x.M) * kept
    else:
        K = x.M + pattern.energy + max(x.K - x.M - x.pattern.energy, 0.0) * kept
    return clean(x.m, K, x.M, False, profile=_pool_profile(node, x), gaussian=x.gaussian)


@backward_rule("avg_pool")
def avg_pool_backward(node, ins, outs, grads, ctx):
    """G_x = G_y n_cov / A^2 with mean n_cov = A / prod(s)."""
    return [grads[0] / (_window(node) * float(np.prod(node.attrs["strides"])))]


def max_over(x: Moments, areas: int | dict[int, float], program=None) -> tuple[float, float, float]:
    """Max of `area` values c + s T sharing a channel offset c ~ N(m, M - m^2) with noise s = sqrt(K - M):
    mean, second moment and coherent energy; optionally through a monotone function applied before the
    max (max(phi(z)) = phi(max z)). `areas` may map window sizes to their shares of the outputs (a padded
    pool's border windows hold fewer values: their maxima are smaller, and the map's channel mean mixes them)."""
    areas = {areas: 1.0} if isinstance(areas, int) else areas
    s = np.sqrt(max(x.K - x.M, 0.0))
    t, w = nodes(0.0, 1.0)
    density = sum(share * w * area * standard_cdf(t) ** (area - 1) for area, share in areas.items())
    fn = pointwise.as_function(program) if program is not None else (lambda z: z)
    cx, cw = np.polynomial.hermite_e.hermegauss(24)
    cw = cw / cw.sum()
    offsets = x.m + np.sqrt(max(x.M - x.m**2, 0.0)) * cx
    values = fn(offsets[:, None] + s * t[None, :])  # (offset, noise)
    channel_mean = values @ density
    mean = float(cw @ channel_mean)
    second = float(cw @ ((values**2) @ density))
    return mean, second, float(cw @ channel_mean**2)


def _window_areas(node) -> dict[int, float]:
    """The number of values each output's window holds inside the input, with its share of the outputs (zero
    padding is never the max: torch and ONNX pad a max pool with -inf); the whole window where the map is
    unknown."""
    axes = window_axes(node)
    if axes is None:
        return {_window(node): 1.0}
    areas = {1: 1.0}
    for axis in axes:
        counts, n_out = np.bincount(taps_inside(axis)), axis[1]
        combined: dict[int, float] = {}
        for area, share in areas.items():
            for count, n in enumerate(counts):
                if n and count:
                    combined[area * count] = combined.get(area * count, 0.0) + share * n / n_out
        areas = combined
    return areas


def _source_program(node, ctx):
    """If the pooled tensor is a monotone function of a Gaussian tensor, return (program, its input)."""
    producer = node.inputs[0].producer
    if producer is None or producer.op != "pointwise":
        return None, None
    program = producer.attrs["program"]
    if program[0] not in _MONOTONE or len(program) != 3 or program[2] != ("x",):
        return None, None
    return program, ctx.forward.get(producer.inputs[0])


@forward_rule("max_pool", "global_max_pool")
def max_pool_forward(node, ins, ctx):
    x = ins[0]
    areas = _window_areas(node) if node.op == "max_pool" else {_spatial_size(node) or 1: 1.0}
    program, source = _source_program(node, ctx)
    if source is not None:
        mean, K, M = max_over(source, areas, program)
        exact = source.exact and source.gaussian
    else:
        mean, K, M = max_over(x, areas)
        exact = x.exact and x.gaussian
    profile, means = _max_pool_maps(node, x, source, program) if node.op == "max_pool" else (None, None)
    # a window with one positive entry
    positive = None if x.positive is None else sum(f * (1 - (1 - x.positive) ** a) for a, f in areas.items())
    return clean(mean, K, M, exact, gaussian=False, profile=profile, mean_profile=means, positive=positive)


# energies at which the maxima are computed across a map's range, interpolated between; beyond this many output
# positions the pool keeps a conv's profile (the grid is held whole)
_MAP_SCALES = 5
_MAX_POSITIONS = 1 << 16


def _max_pool_maps(node, x: Moments, source: Moments | None, program):
    """The output's energy and mean profiles: the maxima's over the map, else a conv's profile and an even mean."""
    maps = _maxima_over_map(node, source if source is not None else x, program)
    return maps if maps is not None else (_pool_profile(node, x), None)


def _maxima_over_map(node, x: Moments, program) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]] | None:
    """The maxima's energy and mean profiles over the output map: each window holds the entries inside the input
    (fewer at a padded border) at their mean energy there (the input's profile), and a smaller or quieter window
    has a smaller maximum. The mean varies with it, which the conv after the pool sums into channel offsets that
    vary over the map (§2, §7). None where the map is unknown or too large."""
    axes = window_axes(node)
    if axes is None:
        return None
    energy, area = window_entries(axes, x.profile)
    if energy.size > _MAX_POSITIONS or not energy.min() > 0:
        return None
    low, high = float(energy.min()), float(energy.max())
    scales = map_scales(low, high, _MAP_SCALES)
    mean, K = np.zeros(energy.shape), np.zeros(energy.shape)
    for a in np.unique(area):
        at = np.array([max_over(scaled_entries(x, s), int(a), program)[:2] for s in scales])
        here = area == a
        mean[here] = np.interp(np.log(energy[here]), np.log(scales), at[:, 0])
        K[here] = np.interp(np.log(energy[here]), np.log(scales), at[:, 1])
    profile, means = marginal_profiles(K), marginal_profiles(mean)
    return (profile, means) if profile is not None and means is not None else None


@backward_rule("max_pool", "global_max_pool")
def max_pool_backward(node, ins, outs, grads, ctx):
    """Each output's gradient goes to its window's argmax: G_x = G_y A / (A prod(s)) on average; where windows
    overlap and their gradients co-vary (an average pool behind made them), two that share their maximum add
    coherently (§7)."""
    if node.op == "global_max_pool":
        return [grads[0] / (_spatial_size(node) or 1)]
    coherent = shared_maximum_excess(node, ctx.backward_neighbours.get(node.outputs[0]))
    return [grads[0] / float(np.prod(node.attrs["strides"])) * (1 + coherent)]


def argmax_slope_ratio(activation, ctx) -> float:
    """<phi'(max)^2> / <phi'^2> for an activation whose one reader is a max pool, else 1.

    The pool sends its gradient to each window's argmax, which is where phi' is largest (a ReLU window's max is
    positive with probability 1 - 2^-A), not a random point; the activation's backward <phi'^2> assumes
    independence, and this ratio corrects it there, so the pool's own input keeps its honest G."""
    readers = activation.outputs[0].consumers
    if len(readers) != 1 or readers[0].op not in ("max_pool", "global_max_pool"):
        return 1.0
    pool = readers[0]
    program, source = _source_program(pool, ctx)
    if source is None:
        return 1.0
    area = _window(pool) if pool.op == "max_pool" else _spatial_size(pool) or 1
    return _argmax_slope_ratio(source, area, program)


def _argmax_slope_ratio(x: Moments, area: int, program) -> float:
    fn = pointwise.as_function(program)
    t, w = nodes(0.0, 1.0)
    from initcheck.gaussian import derivative

    density = w * area * standard_cdf(t) ** (area - 1)
    s = np.sqrt(max(x.K - x.M, 0.0))
    cx, cw = np.polynomial.hermite_e.hermegauss(24)
    cw = cw / cw.sum()
    offsets = x.m + np.sqrt(max(x.M - x.m**2, 0.0)) * cx
    at_max = float(cw @ ((derivative(fn, offsets[:, None] + s * t[None, :]) ** 2) @ density))
    anywhere = float(cw @ ((derivative(fn, offsets[:, None] + s * t[None, :]) ** 2) @ w))
    return at_max / anywhere if anywhere > 0 else 1.0


def _spatial_size(node) -> int | None:
    shape = node.inputs[0].shape
    if shape is None or len(shape) < 3 or any(d is None for d in shape[2:]):
        return None
    return int(np.prod(shape[2:]))


@forward_rule("global_avg_pool")
def global_avg_pool_forward(node, ins, ctx):
    """K = M + (K - M)/HW: only the channel-coherent part survives averaging (docs/theory.md §7)."""
    x = ins[0]
    hw = _spatial_size(node)
    return clean(x.m, x.M + (x.K - x.M) / (hw or 1), x.M, x.exact and hw is not None, gaussian=x.gaussian)


@backward_rule("global_avg_pool")
def global_avg_pool_backward(node, ins, outs, grads, ctx):
    hw = _spatial_size(node) or 1
    return [grads[0] / hw**2]


def _linear_phase_energy(scale: float, n_in: int | None = None, profile: np.ndarray | None = None) -> float:
    """Mean over output positions of the squared interpolation weights (half-pixel linear). Interior:
    w0^2 + w1^2 per phase (x2: 0.625); with the input length known, border outputs clamp onto the edge
    pixel (energy 1)."""
    if not n_in or n_in * scale > MAX_PROFILE_LENGTH:
        s = min(max(int(round(scale)), 1), 4096)  # the phase average has converged long before 4096 phases
        frac = ((np.arange(s) + 0.5) / s - 0.5) % 1.0
        return float(np.mean((1 - frac) ** 2 + frac**2))
    coord = (np.arange(int(round(n_in * scale))) + 0.5) / scale - 0.5
    left = np.floor(coord)
    frac = coord - left
    lo, hi = np.clip(left, 0, n_in - 1).astype(int), np.clip(left + 1, 0, n_in - 1).astype(int)
    p = profile if profile is not None and len(profile) == n_in else np.ones(n_in)  # relative K per input position
    return float(np.mean(np.where(lo == hi, p[lo], (1 - frac) ** 2 * p[lo] + frac**2 * p[hi])))


def _axis_energies(node, profile=None) -> list[float]:
    scales = node.attrs.get("scales") or []
    lengths = spatial_lengths(node.inputs[0], len(scales))
    profiles = list(profile) if profile and len(profile) == len(scales) else [None] * len(scales)
    return [_linear_phase_energy(s, n, p) if s > 1 else 1.0 for s, n, p in zip(scales, lengths, profiles)]


def _repeated(profile, factors) -> tuple[np.ndarray, ...] | None:
    if len(profile) != len(factors):
        return None
    return tuple(np.repeat(p, s) for p, s in zip(profile, factors))


@forward_rule("resize")
def resize_forward(node, ins, ctx):
    """Nearest: unchanged. Linear: per axis the variance part shrinks by the phase energy (×2: 0.625)."""
    x = ins[0]
    scales = node.attrs.get("scales") or []
    if node.attrs.get("mode", "nearest") == "nearest" or not scales:
        factors = nearest_factors(node, x.profile)  # each input position repeated s times per axis
        profile = None if factors is None else _repeated(x.profile, factors)
        means = None if factors is None or x.mean_profile is None else _repeated(x.mean_profile, factors)
        exact = x.exact and node.attrs.get("mode", "nearest") == "nearest"
        return x.with_(profile=profile, mean_profile=means, exact=exact)
    energy = float(np.prod(_axis_energies(node, x.profile)))
    integral = all(abs(s - round(s)) < 1e-6 for s in scales)
    return clean(x.m, x.M + energy * (x.K - x.M), x.M, x.exact and integral, gaussian=x.gaussian)


@backward_rule("resize")
def resize_backward(node, ins, outs, grads, ctx):
    """Each input feeds s outputs per axis: nearest ×s, linear ×s·(phase energy) (×2: 1.25)."""
    scales = node.attrs.get("scales") or [1.0]
    linear = node.attrs.get("mode", "nearest") != "nearest"
    energies = _axis_energies(node) if linear else [1.0] * len(scales)
    factor = float(np.prod([s * e for s, e in zip(scales, energies)]))
    return [grads[0] * factor] + [None] * (len(ins) - 1)


def _reduced_count(node) -> int | None:
    shape = node.inputs[0].shape
    axes = node.attrs.get("axes")
    if shape is None:
        return None
    axes = range(len(shape)) if not axes else axes
    dims = [shape[a] for a in axes]
    return None if any(d is None for d in dims) else int(np.prod(dims))


def _over_channels(node) -> bool:
    shape = node.inputs[0].shape or ()
    axes = [a % len(shape) for a in node.attrs.get("axes") or range(len(shape))] if shape else []
    channel = 1 if len(shape) == 4 else len(shape) - 1
    return channel in axes


@forward_rule("reduce_mean", "reduce_sum")
def reduce_forward(node, ins, ctx):
    """Mean of n entries: over positions K = M + (K - M)/n; over channels K = m^2 + (K - m^2)/n."""
    x = ins[0]
    n = _reduced_count(node) or 1
    base = x.m**2 if _over_channels(node) else x.M
    K = base + (x.K - base) / n
    scale = float(n * n) if node.op == "reduce_sum" else 1.0
    mean = x.m * (n if node.op == "reduce_sum" else 1)
    return clean(
        mean, K * scale, base * scale, x.exact and _reduced_count(node) is not None, gaussian=n > 8 or x.gaussian
    )


@backward_rule("reduce_mean", "reduce_sum")
def reduce_backward(node, ins, outs, grads, ctx):
    n = _reduced_count(node) or 1
    return [grads[0] / (n * n) if node.op == "reduce_mean" else grads[0]] + [None] * (len(ins) - 1)


@forward_rule("reduce_max", approximate=True)
def reduce_max_forward(node, ins, ctx):
    x = ins[0]
    mean, K, M = max_over(x, _reduced_count(node) or 1)
    return clean(mean, K, M, False, gaussian=False)


@backward_rule("reduce_max")
def reduce_max_backward(node, ins, outs, grads, ctx):
    return [grads[0] / (_reduced_count(node) or 1)] + [None] * (len(ins) - 1)
