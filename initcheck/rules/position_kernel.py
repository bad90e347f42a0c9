"""How the positions of a sequence co-vary beyond the part they all share (docs/theory.md §16).

Diffuse causal attention gives query t the mean of the first t + 1 values, so afterwards tokens s < t share the
values both saw: their covariance is about K_v / (t + 1), large between early tokens and small between late ones.
S (the part every position shares, §9) holds only its average. The next causal attention averages each query's
own prefix, where the early tokens' strong covariance adds up coherently: the first decoder layers' attention
outputs were predicted 0.7-0.8x the measurement with S alone. Backward it is the same: a key's gradient is the
mean of the gradients of the queries that see it, so the gradients of early tokens co-vary, and an attention
further down adds them coherently (the first value projections' G, 2-5x low before).

The kernel is that excess covariance along one axis, relative to the tensor's K (forward) or G (backward):
cross[s, t] = (E[x_s x_t] - S) / K for s != t, 0 on the diagonal (the energy profile, §15, holds that). Causal
attention makes it; views, transposes, slices, position-wise ops, sums, products and per-token norms carry it;
the next attention reads it. Where an op is not listed the kernel ends: no excess covariance, the rule of §9.
It is a T x T matrix, so it is kept only up to MAX_KERNEL_LENGTH positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from initcheck import gaussian, pointwise
from initcheck.limits import MAX_KERNEL_LENGTH
from initcheck.rules import axis_profile
from initcheck.rules.axis_profile import COPIES, PER_POSITION_NORMS, RESHAPES, fits

_NEGLIGIBLE = 1e-3  # entries below this share of K change no later attention output measurably
_CARRIED = frozenset({"dropout", "where"})  # linear in their input (a mask or a scale): the shares stay


@dataclass(frozen=True, eq=False)
class PositionKernel:
    """Along `axis`, (E[x_s x_t] - S) / K for s != t; 0 on the diagonal."""

    axis: int
    cross: np.ndarray  # float32, square
    # the shared part (of K or G) as a fraction, where the kernel came from a whole second-moment matrix that says
    # it better than the scalar rule (a per-token norm of uneven tokens, a product): None elsewhere
    share: float | None = None

    def __len__(self) -> int:
        return len(self.cross)


def kernel_along(axis: int, cross, share: float | None = None) -> PositionKernel | None:
    """A kernel with a zero diagonal, or None where negligible, too long or not finite."""
    cross = np.array(cross, dtype=np.float32)
    if cross.ndim != 2 or cross.shape[0] != cross.shape[1] or not 2 <= len(cross) <= MAX_KERNEL_LENGTH:
        return None
    np.fill_diagonal(cross, 0.0)
    if not np.all(np.isfinite(cross)) or np.abs(cross).max() < _NEGLIGIBLE:
        return None
    return PositionKernel(axis, cross, share)


def _share(x) -> float:
    """The part of K all positions share, as a fraction."""
    return x.shared / x.K if x.K > 0 else 0.0


def _energy(x, axis: int, length: int) -> np.ndarray:
    p = x.axial if x is not None else None
    return p.energy if p is not None and p.axis == axis and len(p.energy) == length else np.ones(length)


def _relative(cross: np.ndarray | None, share: float, energy: np.ndarray) -> np.ndarray:
    """The whole relative second-moment matrix E[x_s x_t] / K: the shared part and the excess off the diagonal,
    each position's relative energy on it."""
    n = len(energy)
    full = np.full((n, n), share) + (cross.astype(np.float64) if cross is not None else 0.0)
    np.fill_diagonal(full, energy)
    return full


def _between(full: np.ndarray) -> float:
    """The mean over pairs of distinct positions: the part they share (S, the population's: independent tokens
    share none of their own energy however few they are)."""
    n = len(full)
    return float((full.sum() - np.trace(full)) / (n * (n - 1)))


def _excess(axis: int, full: np.ndarray) -> PositionKernel | None:
    """The kernel of a relative second-moment matrix: what varies beyond the part all pairs share, relative to
    its diagonal's mean (K)."""
    scale = float(np.mean(np.diag(full)))
    if scale <= 0:
        return None
    between = _between(full)
    return kernel_along(axis, (full - between) / scale, between / scale)


# ---- attention ----------------------------------------------------------------------------------------------


def _diffuse_weights(rows: np.ndarray, keys: int) -> np.ndarray:
    """Each query's attention spread evenly over the keys its row sees: (queries, keys)."""
    return (np.arange(keys)[None, :] < rows[:, None]) / rows[:, None]


def attended(rows: np.ndarray, keys: int, values, kernel: PositionKernel | None, axis: int) -> dict | None:
    """Diffuse attention over values whose positions co-vary (or a causal mask that makes them): the output's
    per-query energy the kernel adds, its shared energy and its kernel. None where too long."""
    if len(rows) > MAX_KERNEL_LENGTH or keys > MAX_KERNEL_LENGTH:
        return None
    weights = _diffuse_weights(rows, keys)
    excess = values.K * kernel.cross.astype(np.float64) if kernel is not None and len(kernel.cross) == keys else None
    own = np.diag((values.K - values.shared) * _energy(values, axis, keys))
    total = weights @ (own if excess is None else own + excess) @ weights.T
    added = np.einsum("ts,sr,tr->t", weights, excess, weights) if excess is not None else np.zeros(len(rows))
    between = _between(total)
    return {"added": added, "shared": values.shared + between, "cross": total - between}


def attended_back(rows: np.ndarray, keys: int, G: float, shared: float, grads, kernel) -> dict | None:
    """The values' gradient, key s summing the gradients of the queries that see it (weights^T g): the energy the
    queries' kernel adds per key, the part all keys share and the keys' gradient kernel (absolute). `grads`: the
    queries' G profile; `shared`: the part of G all queries share."""
    if len(rows) > MAX_KERNEL_LENGTH or keys > MAX_KERNEL_LENGTH:
        return None
    weights = _diffuse_weights(rows, keys)
    queries = len(rows)
    q = grads.energy if grads is not None and len(grads.energy) == queries else np.ones(queries)
    excess = G * kernel.cross.astype(np.float64) if kernel is not None and len(kernel.cross) == queries else None
    # the queries' shared part too: a key collects it in proportion to how many queries see it (early keys more)
    own = np.diag((G - shared) * q) + shared
    total = weights.T @ (own if excess is None else own + excess) @ weights
    added = np.einsum("ts,tr,rs->s", weights, excess, weights) if excess is not None else np.zeros(keys)
    between = _between(total)
    return {"added": added, "shared": between, "cross": total - between}


def relative_matrix(
    kernel: PositionKernel | None, share: float, energy: np.ndarray | None, n: int
) -> np.ndarray | None:
    """E[x_s x_t] / K (or the gradient's, / G) as a whole matrix over n positions; None where too long."""
    if n > MAX_KERNEL_LENGTH:
        return None
    cross = kernel.cross if kernel is not None and len(kernel.cross) == n else None
    return _relative(cross, share, energy if energy is not None and len(energy) == n else np.ones(n))


def key_gradients(rows: np.ndarray, values, value_kernel, value_axis: int, gradients, queries) -> tuple | None:
    """Each key's gradient through a diffuse softmax, sum over queries t, t' that see key s of
    H_tt' E[(v_s - vbar_t) . (v_s - vbar_t')] / (n_t n_t'), H the queries' relative second moments times their
    output gradients' (whole matrices): where both co-vary between queries (a causal attention before, a gradient
    shared over positions), the rows add coherently. Returns, per key, that and the same with each query's
    gradient alone and the queries' energy even (what the scalar rule takes); None where too long."""
    keys = int(rows.max())
    shape = (len(rows), len(rows))
    if keys > MAX_KERNEL_LENGTH or len(rows) > MAX_KERNEL_LENGTH or gradients.shape != shape or queries.shape != shape:
        return None
    A = _relative(
        value_kernel.cross if value_kernel is not None else None, _share(values), _energy(values, value_axis, keys)
    )
    W = _diffuse_weights(rows, keys)
    M = W @ A  # E[vbar_t . v_s] / K
    N = M @ W.T  # E[vbar_t . vbar_t'] / K

    def summed(H: np.ndarray) -> np.ndarray:
        HW = H @ W
        return (
            np.diag(A) * np.einsum("ts,ts->s", W, HW)
            - 2 * np.einsum("ts,ts->s", W * M, HW)
            + np.einsum("ts,ts->s", W, (H * N) @ W)
        )

    return np.maximum(summed(gradients * queries), 0.0), np.maximum(summed(np.diag(np.diag(gradients))), 0.0)


def centred_overlaps(
    rows: np.ndarray, values, value_kernel, keys, key_kernel, axes: tuple[int, int]
) -> np.ndarray | None:
    """tr(P A P B) for each query row t over its n_t keys, A and B the values' and the keys' relative second-moment
    matrices there and P = I - 11^T / n_t (a softmax's backward removes each row's mean): a query's gradient sums
    the keys weighted by its row of the logits' gradient, whose covariance is P A P, so the keys' part common to
    the row cancels. O(T^2) by prefix sums; None where too long."""
    n_keys = int(rows.max())
    if n_keys > MAX_KERNEL_LENGTH or len(rows) > MAX_KERNEL_LENGTH:
        return None
    A = _relative(
        value_kernel.cross if value_kernel is not None else None, _share(values), _energy(values, axes[0], n_keys)
    )
    B = _relative(key_kernel.cross if key_kernel is not None else None, _share(keys), _energy(keys, axes[1], n_keys))
    last = rows.astype(np.int64) - 1
    trace = np.cumsum(np.cumsum(A * B, axis=0), axis=1)[last, last]
    mixed = np.cumsum(np.cumsum(A, axis=0) * np.cumsum(B, axis=0), axis=1)[last, last]
    total_a = np.cumsum(np.cumsum(A, axis=0), axis=1)[last, last]
    total_b = np.cumsum(np.cumsum(B, axis=0), axis=1)[last, last]
    return np.maximum(trace - 2 * mixed / rows + total_a * total_b / rows**2, 0.0)


def row_deviations(rows: np.ndarray, keys: int, values, kernel: PositionKernel | None, axis: int) -> np.ndarray | None:
    """E|v_s - vbar_t|^2 / K_v for each query row t and key s it sees, vbar_t the mean of the row's values
    (diffuse attention), from the values' whole relative second-moment matrix; 0 where masked. What a softmax's
    backward keeps of row t's gradient at key s: the row's common part cancels. None where too long."""
    if len(rows) > MAX_KERNEL_LENGTH or keys > MAX_KERNEL_LENGTH:
        return None
    full = _relative(kernel.cross if kernel is not None else None, _share(values), _energy(values, axis, keys))
    weights = _diffuse_weights(rows, keys)
    with_mean = weights @ full  # E[vbar_t . v_s] / K
    mean_energy = np.einsum("tv,tv->t", with_mean, weights)  # E|vbar_t|^2 / K
    deviation = np.diag(full)[None, :] - 2 * with_mean + mean_energy[:, None]
    return np.maximum(deviation, 0.0) * (weights > 0)


# ---- position-wise ops --------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _pair_moments(program, m: float, var: float, derivative: bool) -> tuple[np.ndarray, np.ndarray]:
    """E[f(x) f(y)] for x, y ~ N(m, var) with correlation rho, on a grid of rho; f = phi or phi'."""
    fn = pointwise.as_function(program)
    f = (lambda z: gaussian.derivative(fn, z)) if derivative else fn
    z, w = np.polynomial.hermite_e.hermegauss(32)
    w = w / w.sum()
    rhos = np.linspace(-1.0, 1.0, 81)
    sd = np.sqrt(max(var, 0.0))
    out = []
    with np.errstate(all="ignore"):
        fx = f(m + sd * z)
        for rho in rhos:
            y = m + sd * (rho * z[:, None] + np.sqrt(max(1 - rho * rho, 0.0)) * z[None, :])
            fy = f(y)
            values = np.where(np.isfinite(fx[:, None] * fy), fx[:, None] * fy, 0.0)
            out.append(float(w @ values @ w))
    return rhos, np.asarray(out)


def _through_program(program, x, cross: np.ndarray, derivative: bool) -> tuple[np.ndarray, float, float]:
    """E[f(x_s) f(x_t)] minus its value at the shared correlation alone, and E[f^2] (f = phi or phi'); the input's
    positions at correlation (S - m^2 + cross K) / var."""
    var = x.var
    if var <= 0:
        return np.zeros_like(cross), 0.0, 1.0
    rhos, table = _pair_moments(program, float(f"{x.m:.6g}"), float(f"{var:.6g}"), derivative)
    base = (x.shared - x.m * x.m) / var
    rho = np.clip(base + cross * x.K / var, -1.0, 1.0)
    at_base = float(np.interp(np.clip(base, -1.0, 1.0), rhos, table))
    return np.interp(rho, rhos, table) - at_base, at_base, float(table[-1])


def _pointwise(node, x, out, kernel: PositionKernel) -> PositionKernel | None:
    shifted, _, _ = _through_program(node.attrs["program"], x, kernel.cross.astype(np.float64), False)
    return kernel_along(kernel.axis, shifted / out.K) if out.K > 0 else None


def _scaled(kernel: PositionKernel, x, out) -> PositionKernel | None:
    """An op linear in its input: the covariance beyond the shared part scales as the unshared energy does."""
    unshared_in, unshared_out = x.K - x.shared, out.K - out.shared
    if unshared_in <= 0 or out.K <= 0:
        return None
    return kernel_along(kernel.axis, kernel.cross * (unshared_out / unshared_in) * (x.K / out.K))


def _per_token(kernel: PositionKernel, share: float, energy: np.ndarray) -> PositionKernel | None:
    """A norm divides each token by its own scale: E[x_s x_t] by both. The shared part so divided varies too:
    early tokens of a causal stack, loud with the few values they averaged, share less of it afterwards."""
    full = _relative(kernel.cross, share, energy)
    return _excess(kernel.axis, full / np.sqrt(np.outer(energy, energy)))


def _on(kernel: PositionKernel | None, value, axis: int | None = None) -> np.ndarray | None:
    if kernel is None or not fits(kernel, value) or (axis is not None and kernel.axis != axis):
        return None
    return kernel.cross.astype(np.float64)


def forward(node, ins, out_value, out, kernels: dict) -> PositionKernel | None:
    """The kernel of one output of `node` from its inputs' (`kernels`: value -> PositionKernel)."""
    signals = [(v, x, kernels.get(v)) for v, x in zip(node.inputs, ins) if v is not None and x is not None]
    carrying = [(v, x, k) for v, x, k in signals if k is not None and fits(k, v)]
    if not carrying:
        return None
    value, x, kernel = carrying[0]
    assert kernel is not None
    op = node.op
    if op in COPIES or op in ("expand", "tile"):
        result = kernel
    elif op in RESHAPES or op in ("transpose", "gather", "slice", "split"):
        placed = axis_profile.placement(node, kernel.axis, value, out_value)
        if placed is None:
            return None
        axis, picked = placed
        result = kernel_along(axis, kernel.cross if picked is None else kernel.cross[np.ix_(picked, picked)])
    elif op == "linear":
        result = _scaled(kernel, x, out) if kernel.axis < len(value.shape) - 1 else None
    elif op in _CARRIED:
        result = _scaled(kernel, x, out)
    elif op == "pointwise":
        result = _pointwise(node, x, out, kernel)
    elif op in ("add", "sub") and out.K > 0:
        parts = [x.K * k.cross for v, x, k in carrying if k.axis == kernel.axis]
        result = kernel_along(kernel.axis, sum(parts) / out.K)
    elif op == "mul":
        result = _multiplied(signals, kernel)
    elif op in PER_POSITION_NORMS:
        normalised = axis_profile.normalised_from(node, len(value.shape))
        energy = _energy(x, kernel.axis, len(kernel.cross))
        result = _per_token(kernel, _share(x), energy) if kernel.axis < normalised else None
    elif op == "concat":
        result = _concatenated(node, signals, kernel, out_value)
    else:
        return None
    return result if fits(result, out_value) else None


def _multiplied(signals, kernel: PositionKernel) -> PositionKernel | None:
    if len(signals) != 2:
        return kernel  # a signal times constants (a scale, rotary tables): its shares stay
    n = len(kernel.cross)
    full = np.ones((n, n))
    for v, x, k in signals:  # independent factors: E[a_s b_s a_t b_t] = E[a_s a_t] E[b_s b_t]
        full = full * _relative(_on(k, v, kernel.axis), _share(x), _energy(x, kernel.axis, n))
    return _excess(kernel.axis, full)


def _concatenated(node, signals, kernel: PositionKernel, out_value) -> PositionKernel | None:
    """Parts side by side along another axis (features): their covariances mix by energy and size. One part alone
    (an exporter's concatenation onto an empty cache) is a copy."""
    if len([v for v in node.inputs if v is not None and v.numel != 0]) == 1:
        return kernel
    rank = len(out_value.shape) if out_value.shape is not None else 0
    if rank == 0 or int(node.attrs.get("axis", 0)) % rank == kernel.axis:
        return None
    total, weight = 0.0, 0.0
    for v, x, k in signals:
        n = axis_profile.length_along(v, int(node.attrs.get("axis", 0)) % rank)
        if n is None:
            return None
        cross = _on(k, v, kernel.axis)
        total = total + n * x.K * (cross if cross is not None else 0.0)
        weight += n * x.K
    return kernel_along(kernel.axis, total / weight) if weight > 0 else None


# ---- backward -----------------------------------------------------------------------------------------------


def backward(node, ins, out_value, grad: PositionKernel | None, shared_fraction: float, profile, kernels) -> list:
    """Each input's gradient kernel from the output's. `shared_fraction`: the part of the output's G all positions
    share; `profile`: its relative G along an axis (AxisProfile or None); `kernels`: the forward kernels."""
    result: list[PositionKernel | None] = [None] * len(node.inputs)
    if grad is None or not fits(grad, out_value):
        return result
    op = node.op
    n = len(grad.cross)
    q = profile.energy if profile is not None and profile.axis == grad.axis and len(profile.energy) == n else np.ones(n)
    for i, (v, x) in enumerate(zip(node.inputs, ins)):
        if v is None or x is None:
            continue
        if op in COPIES or op in _CARRIED or op in ("add", "sub", "expand", "tile", "concat"):
            result[i] = grad
        elif op == "linear":
            result[i] = grad if grad.axis < len(v.shape or ()) - 1 else None
        elif op in RESHAPES or op in ("transpose", "gather", "slice", "split"):
            axis = axis_profile.placement_back(node, grad.axis, v, out_value)
            result[i] = kernel_along(axis, grad.cross) if axis is not None else None
        elif op == "pointwise":
            result[i] = _pointwise_back(node, x, grad, shared_fraction, kernels.get(v))
        elif op == "mul":
            others = [(w, y) for j, (w, y) in enumerate(zip(node.inputs, ins)) if j != i and y is not None]
            full = _relative(grad.cross, shared_fraction, q)
            for w, y in others:  # g_a = b g: E[g_a,s g_a,t] = E[b_s b_t] E[g_s g_t]
                full = full * _relative(_on(kernels.get(w), w, grad.axis), _share(y), _energy(y, grad.axis, n))
            result[i] = _excess(grad.axis, full)
        elif op in PER_POSITION_NORMS and i == 0 and grad.axis < axis_profile.normalised_from(node, len(v.shape)):
            e = _energy(x, grad.axis, n)  # each token's gradient divided by its own scale
            result[i] = _excess(grad.axis, _relative(grad.cross, shared_fraction, q) / np.sqrt(np.outer(e, e)))
        result[i] = result[i] if fits(result[i], v) else None
    return result


def _pointwise_back(node, x, grad: PositionKernel, shared_fraction: float, forward_kernel) -> PositionKernel | None:
    """g_in = phi'(x) g: E[g_in,s g_in,t] = E[phi'(x_s) phi'(x_t)] E[g_s g_t], relative to E[phi'^2] G."""
    cross = forward_kernel.cross.astype(np.float64) if forward_kernel is not None else np.zeros_like(grad.cross)
    if forward_kernel is not None and forward_kernel.axis != grad.axis:
        cross = np.zeros_like(grad.cross, dtype=np.float64)
    shifted, at_base, square = _through_program(node.attrs["program"], x, cross, True)
    if square <= 0:
        return None
    slopes = shifted + at_base
    return kernel_along(grad.axis, (slopes * (shared_fraction + grad.cross) - at_base * shared_fraction) / square)


def combined(G1: float, k1: PositionKernel | None, G2: float, k2: PositionKernel | None) -> PositionKernel | None:
    """A gradient summed from two consumers: the kernels mix by G (a consumer without one adds none)."""
    ref = k1 if k1 is not None else k2
    if ref is None or G1 + G2 <= 0:
        return None
    n = len(ref.cross)
    parts = [(G, k) for G, k in ((G1, k1), (G2, k2)) if k is not None]
    if any(k.axis != ref.axis or len(k.cross) != n for _, k in parts):
        return None
    return kernel_along(ref.axis, sum(G * k.cross.astype(np.float64) for G, k in parts) / (G1 + G2))
