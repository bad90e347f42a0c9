"""Weight statistics, computed once per tensor: the only view of weights that rules ever get.

`TensorStats` summarises any constant; `LinearStats` is what the linear/conv rules need (docs/theory.md §1-3):
fan-in/out, mean square of the weights, row-sum energy R, bias moments, and for transposed convolutions
the per-output-phase tap energies that set the checkerboard pattern.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

SMALL_CONST = 4096  # constants up to this many elements keep their values (shapes, scalars, masks)
MASK_CONST = 1 << 22  # masks (attention, graph adjacency) are kept up to this many elements
TABLE_READERS = frozenset({"mul", "add", "sub", "div"})  # ops whose constant operands are tables (keeps_values)
MASKED = -1e4  # an additive attention mask's masked entries are this negative or more (-inf, float32's min)


def keeps_values(array: np.ndarray, table: bool = False) -> bool:
    """Whether the IR keeps a constant's values, not only its statistics: small ones, masks (boolean, or an
    additive float mask of zeros and very negative entries: the attention rules count its unmasked keys) and
    `table`s, constants an elementwise op reads entry by entry (RoPE's sines and cosines: the rules read each
    feature's rotation along the positions), never a layer's weights."""
    if array.size <= SMALL_CONST:
        return True
    if array.size > MASK_CONST:
        return False
    if table and array.dtype.kind == "f":
        return True
    return array.dtype == np.bool_ or (array.dtype.kind == "f" and is_additive_mask(array))


def is_additive_mask(array: np.ndarray) -> bool:
    """Only zeros and very negative entries, some of each kind there may be (a weight fails at its first entries)."""
    flat = array.reshape(-1)
    head = flat[:64]
    if not np.all((head == 0) | (head <= MASKED)):
        return False
    return bool(np.all((flat == 0) | (flat <= MASKED)))


@dataclass(frozen=True)
class TensorStats:
    shape: tuple[int, ...]
    numel: int
    mean: float
    mean_sq: float
    nan_count: int
    inf_count: int
    is_constant: bool  # every finite entry equal (e.g. all zeros)
    coherent: float = 0.0  # mean over channels (last non-singleton axis) of the squared mean over the rest
    # per axis, the mean square at each index of it (None along axes of length 1), for constants of at most
    # MASK_CONST entries: a position table (RoPE's sines) is not the same energy at every position
    axis_energy: tuple[tuple[float, ...] | None, ...] | None = None

    @property
    def std(self) -> float:
        return float(np.sqrt(max(self.mean_sq - self.mean**2, 0.0)))

    @property
    def finite(self) -> bool:
        return self.nan_count == 0 and self.inf_count == 0


CHUNK = 1 << 20  # elements per pass: weights are streamed, never copied whole to float64


def _chunks(flat: np.ndarray):
    for start in range(0, flat.size, CHUNK):
        yield flat[start : start + CHUNK].astype(np.float64)


def tensor_stats(array: np.ndarray) -> TensorStats:
    a = np.asarray(array)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.number):
        a = a.astype(np.float64)
    flat = a.reshape(-1)
    n_finite = nan = inf = 0
    total = squares = 0.0
    low, high = np.inf, -np.inf
    for part in _chunks(flat):
        finite = np.isfinite(part)
        nan += int(np.isnan(part).sum())
        inf += int(np.isinf(part).sum())
        vals = part if finite.all() else part[finite]
        n_finite += vals.size
        total += float(vals.sum())
        squares += float(np.dot(vals, vals))
        if vals.size:
            low, high = min(low, float(vals.min())), max(high, float(vals.max()))
    mean = total / n_finite if n_finite else 0.0
    mean_sq = squares / n_finite if n_finite else 0.0
    return TensorStats(
        coherent=_coherent(a) if n_finite == flat.size else mean_sq,
        shape=tuple(int(d) for d in a.shape),
        numel=int(flat.size),
        mean=mean,
        mean_sq=mean_sq,
        nan_count=nan,
        inf_count=inf,
        is_constant=bool(n_finite > 0 and low == high),
        axis_energy=_axis_energy(a) if n_finite == flat.size else None,
    )


def _axis_energy(a: np.ndarray) -> tuple[tuple[float, ...] | None, ...] | None:
    if a.ndim < 2 or a.size > MASK_CONST or a.size == 0:
        return None
    squares = np.square(a, dtype=np.float64)
    return tuple(
        tuple(float(e) for e in squares.mean(axis=tuple(j for j in range(a.ndim) if j != i))) if d > 1 else None
        for i, d in enumerate(a.shape)
    )


FEW_UNITS = 64  # a layer with at most this many outputs keeps each one's row sum and bias (docs/theory.md §4)
FEW_INPUTS = 64  # a layer whose rows sum at most this many entries keeps a sample of its rows (§4)
SAMPLED_ROWS = 256


@dataclass(frozen=True)
class LinearStats:
    """Statistics of a weight in canonical layout: rows = output units, columns = everything summed.

    fan_in: inputs summed per output (C_in/g * prod(k) for conv); fan_out: outputs each input feeds
    (before dividing by stride); w_sq: mean of W^2; row_sum_mean / row_sum_sq: mean of S_c and S_c^2 for
    row sums S_c; bias_*: bias moments; sb_mean: mean of S_c * b_c; phase_*: per-output-phase tap
    energies and tap-sum energies for transposed convs (None otherwise); row_energy_cv2: the relative variance over
    rows of each row's energy sum_j W_cj^2, how unevenly this instance's outputs vary (docs/theory.md §17); units:
    each row's (sum, bias) where the layer has at most FEW_UNITS rows, too few for their offsets to be Gaussian (§4);
    row_concentration: the mean over rows of sum_j (W_cj^2 / e_c)^2, e_c the row's energy: how much of a row's
    energy one input carries (3 / (fan_in + 2) for Gaussian rows; what one input moves of the output, §4);
    sample_rows: up to SAMPLED_ROWS of the rows, each of unit length, where a row sums at most FEW_INPUTS entries:
    their concentration sets the tails of such sums' law (§4); row_skew: there, the mean over all rows of
    sum_j (W_cj / sqrt(e_c))^3, the layer's lean, which sets such sums' mean skew (a sample of 256 rows of 1,152
    leans +0.037 where the layer leans -0.003).
    """

    fan_in: int
    fan_out: int
    w_mean: float
    w_sq: float
    row_sum_mean: float
    row_sum_sq: float
    bias_mean: float = 0.0
    bias_sq: float = 0.0
    sb_mean: float = 0.0
    phase_energy: tuple[float, ...] | None = None
    phase_row_sum_sq: tuple[float, ...] | None = None
    phase_sb: tuple[float, ...] | None = None
    row_energy_cv2: float = 0.0
    units: tuple[tuple[float, float], ...] | None = None
    row_concentration: float = 0.0
    sample_rows: tuple[tuple[float, ...], ...] | None = None
    row_skew: float = 0.0

    @property
    def gain(self) -> float:
        """fan_in * E[W^2]: the forward gain on a zero-mean input."""
        return self.fan_in * self.w_sq


def _coherent(a: np.ndarray) -> float:
    """Energy of a constant that is the same for every position of a channel (what survives averaging
    over positions when it is added to a signal): a bias vector is all coherent, a position table mostly not."""
    axes = [i for i, d in enumerate(a.shape) if d > 1]
    if len(axes) <= 1:
        flat = a.reshape(-1)
        return sum(float(np.dot(p, p)) for p in _chunks(flat)) / flat.size if a.size else 0.0
    channel = axes[-1]
    means = a.mean(axis=tuple(i for i in range(a.ndim) if i != channel), dtype=np.float64)
    return float(np.mean(means * means))


def _finite(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return np.where(np.isfinite(a), a, 0.0)


def linear_stats(weight: np.ndarray, bias: np.ndarray | None, fan_out: int | None = None) -> LinearStats:
    """weight: (out, ...) with everything after the first axis summed into each output. Streamed by rows."""
    w = np.asarray(weight).reshape(weight.shape[0], -1)
    step = max(1, CHUNK // max(w.shape[1], 1))
    few = 0 < w.shape[1] <= FEW_INPUTS
    rows, energies, fourths = np.empty(w.shape[0]), np.empty(w.shape[0]), np.empty(w.shape[0])
    cubes = np.zeros(w.shape[0])
    for start in range(0, w.shape[0], step):
        block = _finite(w[start : start + step])
        rows[start : start + step] = block.sum(axis=1)
        squared = block * block
        energies[start : start + step] = squared.sum(axis=1)
        fourths[start : start + step] = np.einsum("ij,ij->i", squared, squared)
        if few:
            cubes[start : start + step] = np.einsum("ij,ij->i", squared, block)
    squares = float(energies.sum())
    mean_energy = float(energies.mean()) if energies.size else 0.0
    b = _finite(bias).ravel() if bias is not None else np.zeros(w.shape[0])
    if b.size != w.shape[0]:
        b = np.resize(b, w.shape[0])
    return LinearStats(
        fan_in=int(w.shape[1]),
        fan_out=int(fan_out if fan_out is not None else w.shape[0]),
        w_mean=float(rows.sum() / w.size),
        w_sq=squares / w.size,
        row_sum_mean=float(rows.mean()),
        row_sum_sq=float(np.mean(rows * rows)),
        bias_mean=float(b.mean()),
        bias_sq=float(np.mean(b * b)),
        sb_mean=float(np.mean(rows * b)),
        row_energy_cv2=float(energies.var() / mean_energy**2) if mean_energy > 0 else 0.0,
        units=tuple(zip(rows.tolist(), b.tolist())) if w.shape[0] <= FEW_UNITS else None,
        row_concentration=_per_unit_row(fourths, energies, 2),
        sample_rows=_sampled_rows(w, energies) if few else None,
        row_skew=_per_unit_row(cubes, energies, 1.5) if few else 0.0,
    )


def _sampled_rows(w: np.ndarray, energies: np.ndarray) -> tuple[tuple[float, ...], ...] | None:
    """Up to SAMPLED_ROWS rows spread evenly over the layer, each scaled to unit length (rows of no energy left out)."""
    picked = np.unique(np.linspace(0, w.shape[0] - 1, min(w.shape[0], SAMPLED_ROWS)).astype(int))
    picked = picked[energies[picked] > 0]
    if not picked.size:
        return None
    rows = _finite(w[picked]) / np.sqrt(energies[picked])[:, None]
    return tuple(tuple(float(v) for v in row) for row in rows)


def _per_unit_row(sums: np.ndarray, energies: np.ndarray, power: float) -> float:
    """The mean over rows of sums_c / e_c^power: a per-row sum of W_cj^k of the rows scaled to unit length
    (k = 2 power; rows of no energy left out)."""
    live = energies > 0
    return float(np.mean(sums[live] / energies[live] ** power)) if live.any() else 0.0


def taps_per_phase(k: int, s: int, d: int) -> list[list[int]]:
    """Kernel taps t in [0, k) with t*d = r (mod s), for each phase r (docs/theory.md §3)."""
    return [[t for t in range(k) if (t * d) % s == r] for r in range(s)]


def conv_transpose_stats(
    weight: np.ndarray, bias: np.ndarray | None, groups: int, strides: list[int], dilations: list[int]
) -> LinearStats:
    """weight: (C_in, C_out/g, *k). Per output phase r: sum of tap energies E_t and tap-sum energy S_r."""
    w = _finite(weight)
    c_in, c_out_g = w.shape[:2]
    kernel = w.shape[2:]
    g = max(int(groups), 1)
    wg = w.reshape(g, c_in // g, c_out_g, *kernel)
    b = _finite(bias).ravel() if bias is not None else np.zeros(g * c_out_g)
    b = b.reshape(g, c_out_g) if b.size == g * c_out_g else np.zeros((g, c_out_g))
    c_out = g * c_out_g
    # E_t: sum over c_in of the mean over c_out of W^2 (each (c_in, c_out_local) pair is one output channel)
    tap_energy = (wg**2).sum(axis=(0, 1, 2)) / c_out
    phase_taps = [taps_per_phase(k, s, d) for k, s, d in zip(kernel, strides, dilations)]
    energies, row_sq, sbs = [], [], []
    for phase in product(*phase_taps):
        index = np.ix_(*phase) if all(phase) else None
        if index is None:
            energies.append(0.0)
            row_sq.append(0.0)
            sbs.append(0.0)
            continue
        energies.append(float(tap_energy[index].sum()))
        sums = wg[(slice(None), slice(None), slice(None)) + index].sum(axis=tuple(range(3, 3 + len(kernel))))
        sums = sums.sum(axis=1)  # (g, c_out_g): sum over c_in of the group and the phase's taps
        row_sq.append(float(np.mean(sums**2)))
        sbs.append(float(np.mean(sums * b)))
    fan_in_avg = (c_in // g) * int(np.prod(kernel)) / int(np.prod(strides))
    w_sq = float(np.mean(w * w))
    return LinearStats(
        fan_in=int(round(fan_in_avg)) or 1,
        fan_out=c_out_g * int(np.prod(kernel)),
        w_mean=float(w.mean()),
        w_sq=w_sq,
        row_sum_mean=0.0,
        row_sum_sq=float(np.mean(row_sq)),
        bias_mean=float(b.mean()),
        bias_sq=float(np.mean(b * b)),
        sb_mean=float(np.mean(sbs)),
        phase_energy=tuple(energies),
        phase_row_sum_sq=tuple(row_sq),
        phase_sb=tuple(sbs),
    )


def subpixel_coherence(weight: np.ndarray, block: int, channel_first: bool = True) -> float | None:
    """Mean cosine between the r^2 sub-pixel kernels of each output block of a conv feeding PixelShuffle /
    DepthToSpace (docs/theory.md §3): 1 for ICNR (conv + nearest up-sampling), ~0 for a random init. For a white
    input it is the correlation of a block's sub-pixels. channel_first: channel c r^2 + phase (PixelShuffle,
    DepthToSpace CRD); else phase C + c (DepthToSpace DCR)."""
    w = _finite(weight)
    phases = block * block
    if phases < 2 or w.ndim < 2 or w.shape[0] % phases:
        return None
    flat = w.reshape(w.shape[0], -1)
    groups = (
        flat.reshape(-1, phases, flat.shape[1])
        if channel_first
        else flat.reshape(phases, -1, flat.shape[1]).transpose(1, 0, 2)
    )
    norms = np.linalg.norm(groups, axis=2, keepdims=True)
    unit = groups / np.where(norms > 0, norms, 1.0)
    gram = np.einsum("gpd,gqd->gpq", unit, unit)
    off_diagonal = (gram.sum(axis=(1, 2)) - np.trace(gram, axis1=1, axis2=2)) / (phases * (phases - 1))
    return float(off_diagonal.mean())


def recurrent_gate_stats(w: np.ndarray, r: np.ndarray, bias: np.ndarray, rows: slice) -> dict[str, float]:
    """One gate of an RNN/LSTM/GRU (input weights w, recurrent weights r, summed biases): the gains the mean
    field needs, and the spectral radius and norm of the gate's square recurrent block (docs/theory.md §10)."""
    block = _finite(r[rows])
    hidden = block.shape[0]
    square = block[:, :hidden] if block.shape[1] >= hidden else None
    radius = float(np.max(np.abs(np.linalg.eigvals(square)))) if square is not None and hidden <= 4096 else float("nan")
    norm = float(np.linalg.norm(square, 2)) if square is not None and hidden <= 4096 else float("nan")
    w_rows = _finite(w[rows])
    return {
        "in_gain": w.shape[1] * float(np.mean(w_rows**2)),
        "rec_gain": hidden * float(np.mean(block**2)),
        "bias_sq": float(np.mean(bias[rows] ** 2)),
        "bias_mean": float(np.mean(bias[rows])),
        "in_fan_out_gain": hidden * float(np.mean(w_rows**2)),
        "spectral_radius": radius,
        "spectral_norm": norm,
    }


def untrained_running_stats(mean, var) -> bool:
    """Running statistics at their initial values (mean 0, var 1): the batch norm has never seen data, so in eval
    form it is the identity only by accident, and it will train with batch statistics. A pre-training check reads
    it as it will train (a norm that resets the scale); running statistics from data keep their eval meaning."""
    if mean is None or var is None:
        return False
    return bool(np.all(np.asarray(mean) == 0) and np.all(np.asarray(var) == 1))


def batch_norm_eval_stats(gamma, beta, mean, var, eps: float) -> dict[str, float]:
    """Moments over channels of a = gamma/sqrt(var+eps), mu and beta that the eval-mode rule needs
    (docs/theory.md §6: K_y = mean_c[a^2 (v + (m - mu)^2) + 2 a beta (m - mu) + beta^2])."""
    g, b, mu, v = (np.asarray(x, dtype=np.float64).ravel() for x in (gamma, beta, mean, var))
    a = g / np.sqrt(np.maximum(v, 0) + eps)
    stats = {
        "a": a.mean(),
        "a2": (a**2).mean(),
        "amu": (a * mu).mean(),
        "a2mu": (a**2 * mu).mean(),
        "a2mu2": (a**2 * mu**2).mean(),
        "ab": (a * b).mean(),
        "abmu": (a * b * mu).mean(),
        "b": b.mean(),
        "b2": (b**2).mean(),
    }
    return {k: float(x) for k, x in stats.items()}


def affine_stats(scale: np.ndarray | None, bias: np.ndarray | None) -> dict[str, TensorStats]:
    """Statistics of a normalisation's scale and bias, where present (rules default to 1 and 0)."""
    return {key: tensor_stats(arr) for key, arr in (("scale", scale), ("bias", bias)) if arr is not None}
