"""How neighbouring positions of a feature map co-vary (docs/theory.md §7, "Neighbouring positions").

A max pool whose windows overlap (3x3, stride 2: neighbours share a row or a column) gives neighbouring outputs
correlated maxima: 0.28 for independent inputs. Convolutions keep that correlation at their own scale (for
independent weights only the same tap pairs two positions, so a stride-s conv's lag d reads its input's lag s d),
norms and gates keep it, an activation keeps its first Hermite share, sums mix it by variance. An average pool
then keeps more than 1/A of the variance: a DenseNet's transitions (2x2 after a 1x1 conv over a map whose
neighbours correlate by 0.22) keep 1.5x what independent positions would.

The state is per spatial axis, the correlation at lags 1..LAGS of the entries less their channel's mean, taken as
separable (the correlation at a diagonal offset is the product of the axes'). None: independent positions.

Backward, the gradient has neighbours too (`GradientNeighbours`, "Windows that share a maximum" in §7): an average
pool hands its window's positions one gradient, and a max pool before it sends an entry that is the maximum of two
windows the sum of their correlated gradients.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from initcheck.gaussian import fine_grid, nodes, standard_cdf
from initcheck.rules.common import window_axes

LAGS = 4
_KEEPS = frozenset({"batch_norm", "dropout", "identity", "cast", "prelu", "group_norm", "instance_norm"})


def forward(node, ins, out_value, out) -> tuple[np.ndarray, ...] | None:
    """The output's per-axis correlations between neighbouring positions."""
    x = ins[0] if ins else None
    op = node.op
    if op == "max_pool":
        return _max_pooled(node, x)
    if x is None or (op != "add" and op != "concat" and x.neighbours is None):
        return None
    if op in _KEEPS:
        return x.neighbours if _same_map(node) else None
    if op == "pointwise":
        return _activated(node, x)
    if op == "conv":
        return _strided(node, x.neighbours)
    if op == "avg_pool":
        return _averaged(node, x.neighbours)
    if op == "mul":
        signal = [m for m in ins if m is not None and m.neighbours is not None]
        return signal[0].neighbours if len(signal) == 1 and _same_map(node) else None
    if op in ("add", "concat"):
        return _mixed(node, ins)
    return None


def pooled_variance(neighbours, axes) -> float:
    """The share of the variance an average over a window keeps: prod over axes of sum_{t,t'} rho(t - t') / k^2
    (1/k per axis for independent positions)."""
    share = 1.0
    for axis, (_, _, k, _, _, _) in enumerate(axes):
        share *= float(_window_sum(_lags(neighbours, axis), k, 0) / k**2)
    return share


def tap_correlation(neighbours, kernel, dilations) -> np.ndarray:
    """The correlation between a window's taps (flattened in the weight's order), separable over the axes:
    R[(a, b), (a', b')] = rho_h(d_h |a - a'|) rho_w(d_w |b - b'|); the identity for independent positions."""
    r = np.ones((1, 1))
    for axis, (k, d) in enumerate(zip(kernel, dilations)):
        rho = _lags(neighbours, axis)
        r = np.kron(r, np.array([[_at(rho, d * (b - a)) for b in range(k)] for a in range(k)]))
    return r


def _lags(neighbours, axis: int) -> np.ndarray:
    """rho at lags 0..LAGS along one axis (rho(0) = 1)."""
    rho = np.zeros(LAGS + 1)
    rho[0] = 1.0
    if neighbours is not None and axis < len(neighbours):
        rho[1 : 1 + len(neighbours[axis])] = neighbours[axis][:LAGS]
    return rho


def _at(rho: np.ndarray, lag: int) -> float:
    lag = abs(lag)
    return float(rho[lag]) if lag < len(rho) else 0.0


def _window_sum(rho: np.ndarray, k: int, shift: int) -> float:
    """sum over taps t, t' of rho(shift + t' - t)."""
    return sum(_at(rho, shift + b - a) for a in range(k) for b in range(k))


def _same_map(node, value=None) -> bool:
    """Whether `value` (the node's first input by default) lies on the same map as the node's output."""
    value = node.inputs[0] if value is None else value
    src, dst = value.shape if value is not None else None, node.outputs[0].shape
    return src is not None and dst is not None and len(src) == len(dst) and src[2:] == dst[2:]


def _cleaned(per_axis: list[np.ndarray]) -> tuple[np.ndarray, ...] | None:
    out = tuple(np.clip(p, -1.0, 1.0) for p in per_axis)
    return None if all(np.allclose(p, 0.0, atol=1e-4) for p in out) else out


def _activated(node, x) -> tuple[np.ndarray, ...] | None:
    """On Gaussian entries an activation keeps the first Hermite share c of a correlation rho, the rest goes mostly
    into rho^2 (a ReLU after a norm: 0.32 -> 0.265, measured 0.270). A max pool's neighbours are often the same
    entry (the shared row's maximum), which any function keeps: there the correlation passes whole (measured
    0.29 -> 0.32 through a norm and ReLU, where the Gaussian rule says 0.23)."""
    from initcheck.rules.activations import correlation_kept

    if not x.gaussian:
        return x.neighbours
    kept = correlation_kept(node.attrs["program"], x.m, x.var)
    return _cleaned([kept * p + (1 - kept) * p * p for p in x.neighbours])


def _strided(node, neighbours) -> tuple[np.ndarray, ...] | None:
    """A conv with independent weights pairs two positions only through the same tap: lag d reads lag s d."""
    return _windowed(node, neighbours, lambda rho, k, s, d: _at(rho, s * d))


def _averaged(node, neighbours) -> tuple[np.ndarray, ...] | None:
    """Two windows d apart share the covariance sum_{t,t'} rho(s d + t' - t), over their own variance."""
    return _windowed(node, neighbours, lambda rho, k, s, d: _window_sum(rho, k, s * d) / _window_sum(rho, k, 0))


def _windowed(node, neighbours, correlation) -> tuple[np.ndarray, ...] | None:
    """Per axis, correlation(input's lags, kernel, stride, output lag) at output lags 1..LAGS."""
    axes = window_axes(node)
    if axes is None or len(axes) != len(neighbours):
        return None
    return _cleaned(
        [
            np.array([correlation(_lags(neighbours, axis), k, s, d) for d in range(1, LAGS + 1)])
            for axis, (_, _, k, s, _, _) in enumerate(axes)
        ]
    )


def _max_pooled(node, x) -> tuple[np.ndarray, ...] | None:
    """Windows that overlap share entries, and their maxima correlate (`max_correlation`); what the input's own
    neighbours add is taken on the rest."""
    axes = window_axes(node)
    if axes is None:
        return None
    window = int(np.prod([k for _, _, k, _, _, _ in axes]))
    out = []
    for axis, (_, _, k, s, _, _) in enumerate(axes):
        rho = _lags(x.neighbours if x is not None else None, axis)
        lags = []
        for d in range(1, LAGS + 1):
            shared = window * max(k - s * d, 0) // k
            overlap = max_correlation(window, shared)
            lags.append(overlap + (1 - overlap) * _at(rho, s * d))
        out.append(np.array(lags))
    return _cleaned(out)


@lru_cache(maxsize=256)
def max_correlation(n: int, shared: int) -> float:
    """corr(max(A, B), max(C, B)) for |A| = |C| = n - shared, |B| = shared independent N(0, 1): given b = max B,
    the two maxima are independent, each E[max(a, b) | b] = g(b), so E[M1 M2] = E_b[g(b)^2]."""
    if shared <= 0:
        return 0.0
    if shared >= n:
        return 1.0
    t, w = nodes(0.0, 1.0)
    cdf = standard_cdf(t)
    # a = max of n - shared: its CDF F^(n - shared); g(b) = b F_a(b) + int_b^inf s dF_a(s)
    rest = n - shared
    grid, probability = fine_grid()
    gcdf = standard_cdf(grid)
    tail = np.cumsum((grid * rest * gcdf ** (rest - 1) * probability)[::-1])[::-1]  # int_s^inf u dF_a(u)
    g_grid = grid * gcdf**rest + tail
    density_b = w * shared * cdf ** (shared - 1)  # b = max of `shared`, on the Gaussian nodes
    g = np.interp(t, grid, g_grid)
    density_m = w * n * cdf ** (n - 1)  # M = max of n
    mean = float(density_m @ t)
    var = float(density_m @ (t * t)) - mean * mean
    return float((density_b @ (g * g) - mean * mean) / var) if var > 0 else 0.0


def _mixed(node, ins) -> tuple[np.ndarray, ...] | None:
    """A sum or a channel concatenation: each part's correlations weighed by its share of the variance."""
    parts = [m for m in ins if m is not None]
    if not parts or not all(v is not None and v.shape is not None for v in node.inputs):
        return None
    rank = len(node.outputs[0].shape or ())
    if node.op == "concat" and (rank < 3 or node.attrs.get("axis", 0) % rank != 1):
        return None
    weights = []
    for value, m in zip(node.inputs, ins):
        if m is None:
            continue
        channels = value.shape[1] if node.op == "concat" and len(value.shape) > 1 and value.shape[1] else 1
        weights.append(channels * max(m.K - m.M, 0.0))
    if not any(m.neighbours for m in parts) or sum(weights) <= 0:
        return None
    axes = max(len(m.neighbours) for m in parts if m.neighbours)
    mixed = [np.zeros(LAGS) for _ in range(axes)]
    for w, m in zip(weights, parts):
        for axis in range(axes):
            mixed[axis] += w * _lags(m.neighbours, axis)[1:]
    return _cleaned([p / sum(weights) for p in mixed])


# ---- the gradient between neighbouring positions ------------------------------------------------------------


@dataclass(frozen=True)
class GradientNeighbours:
    """How a gradient co-varies between neighbouring positions (docs/theory.md §7): at each offset of one step or
    none along each spatial axis (`offsets`), its correlation `rho`, and `same`: the correlation between two
    positions whose values are equal, where every activation since the last conv passes both or neither (what
    two max-pool windows with one maximum send back). An average pool makes it (its window's positions get one
    gradient); convs keep it in expectation over independent weights; an activation's slopes thin `rho`."""

    rho: tuple[float, ...]
    same: tuple[float, ...]


def offsets(axes: int) -> list[tuple[int, ...]]:
    """The offsets a gradient's neighbours are kept at: one step or none along each axis, not all none."""
    return [t for t in itertools.product((0, 1), repeat=axes) if any(t)]


_GRADIENT_KEEPS = frozenset({"batch_norm", "dropout", "identity", "cast", "add", "sub", "concat", "mul"})


def gradient_backward(node, ins, out_state: GradientNeighbours | None) -> list[GradientNeighbours | None]:
    """Each input's gradient neighbours from the output's; only average pools make them where there are none."""
    none: list[GradientNeighbours | None] = [None] * len(node.inputs)
    if node.op == "avg_pool":
        return [_pooled_gradient(node, out_state)] + none[1:]
    if out_state is None:
        return none
    if node.op in _GRADIENT_KEEPS:  # a gate of another shape (a squeeze-excitation's) gets none
        return [out_state if value is not None and _same_map(node, value) else None for value in node.inputs]
    if node.op == "conv" and all(s == 1 for s in node.attrs["strides"]) and _same_map(node):
        return [GradientNeighbours(out_state.rho, out_state.rho)] + none[1:]
    if node.op == "pointwise" and len(node.inputs) == 1 and ins[0] is not None:
        return [_through_slopes(node, ins[0], out_state)]
    return none


def _pooled_gradient(node, out_state: GradientNeighbours | None) -> GradientNeighbours | None:
    """Windows that tile the map (kernel = stride, no padding) hand their positions one gradient: two positions an
    offset apart share a window with probability prod (k - step)/k over the axes, else they sit in neighbouring
    windows, which correlate as the output's gradient does."""
    axes = window_axes(node)
    if axes is None or any(k != s or pb or d != 1 for _, _, k, s, d, pb in axes):
        return None
    previous = dict(zip(offsets(len(axes)), out_state.rho)) if out_state is not None else {}
    kernels = [k for _, _, k, _, _, _ in axes]
    rho = []
    for offset in offsets(len(axes)):
        total = 0.0
        for crossing in itertools.product((0, 1), repeat=len(axes)):  # along which axes the pair crosses a border
            if any(c > o for c, o in zip(crossing, offset)):
                continue
            chance = float(np.prod([1 / k if c else (k - o) / k for c, o, k in zip(crossing, offset, kernels)]))
            total += chance * (previous.get(crossing, 0.0) if any(crossing) else 1.0)
        rho.append(total)
    return GradientNeighbours(tuple(rho), tuple(rho))


def _through_slopes(node, x, out_state: GradientNeighbours) -> GradientNeighbours:
    """Backward, each position passes phi'(z) of its gradient: two positions whose inputs correlate by r pass
    E[phi'(z) phi'(z')] / E[phi'^2] of their covariance (a ReLU of a centred input: 1/2 + asin(r)/pi); equal values
    pass both or neither."""
    shape = node.inputs[0].shape
    if shape is None or len(offsets(len(shape) - 2)) != len(out_state.rho):
        return GradientNeighbours(tuple(0.0 for _ in out_state.rho), out_state.same)
    rho = []
    for offset, value in zip(offsets(len(shape) - 2), out_state.rho):
        r = float(np.prod([_lags(x.neighbours, axis)[1] if step else 1.0 for axis, step in enumerate(offset)]))
        rho.append(value * slope_overlap(node.attrs["program"], x.m, max(x.K - x.m * x.m, 0.0), r))
    return GradientNeighbours(tuple(rho), out_state.same)


def slope_overlap(program, mean: float, var: float, r: float) -> float:
    """E[phi'(z) phi'(z')] / E[phi'(z)^2] for z, z' ~ N(mean, var) correlated by r."""
    from initcheck import pointwise
    from initcheck.gaussian import derivative

    fn = pointwise.as_function(program)
    a, w = np.polynomial.hermite_e.hermegauss(32)
    w = w / w.sum()
    s = np.sqrt(var)
    first = derivative(fn, mean + s * a)
    second = derivative(fn, mean + s * (r * a[:, None] + np.sqrt(max(1 - r * r, 0.0)) * a[None, :]))
    both = float(w @ (first[:, None] * second) @ w)
    alone = float(w @ first**2)
    return both / alone if alone > 0 else 0.0


def merged_gradient(before: float, old, g: float, new) -> GradientNeighbours | None:
    """Two consumers' gradients summed: their correlations weighed by their G (a consumer without any: 0)."""
    if old is None and new is None:
        return None
    if before <= 0 or g <= 0:
        return new if before <= 0 else old
    size = len((old or new).rho)
    old = old or GradientNeighbours((0.0,) * size, (0.0,) * size)
    new = new or GradientNeighbours((0.0,) * size, (0.0,) * size)
    if len(old.rho) != len(new.rho):
        return None

    def mix(a, b):
        return tuple((before * x + g * y) / (before + g) for x, y in zip(a, b))

    return GradientNeighbours(mix(old.rho, new.rho), mix(old.same, new.same))


def shared_maximum_excess(node, state: GradientNeighbours | None) -> float:
    """A max pool whose windows overlap: two windows with one maximum send it the sum of their gradients, so its
    G gains sum over neighbouring windows of P(one maximum) times their gradients' correlation given equal values.
    P = shared / (2 A - shared) for A independent entries per window (3x3 at stride 2: 0.2 beside, 1/17 across)."""
    axes = window_axes(node)
    if state is None or axes is None or len(state.same) != len(offsets(len(axes))):
        return 0.0
    window = int(np.prod([k for _, _, k, _, _, _ in axes]))
    same = dict(zip(offsets(len(axes)), state.same))
    excess = 0.0
    for step in itertools.product((-1, 0, 1), repeat=len(axes)):
        if not any(step):
            continue
        shared = int(np.prod([k if t == 0 else max(k - s, 0) for t, (_, _, k, s, _, _) in zip(step, axes)]))
        if shared:
            excess += shared / (2 * window - shared) * same[tuple(abs(t) for t in step)]
    return excess
