"""Small helpers shared by the rule families."""

from __future__ import annotations

import numpy as np

from initcheck.ir import NORMALIZATIONS, Node, Value  # noqa: F401  (NORMALIZATIONS: re-exported)
from initcheck.limits import MAX_PROFILE_LENGTH
from initcheck.moments import Moments, normalize_profile


def normalizes(node: Node) -> bool:
    """Normalisations rescale by statistics of the signal; eval-mode batch norm is a fixed affine map."""
    return node.op in NORMALIZATIONS and not (node.op == "batch_norm" and not node.attrs.get("training"))


def first_signal(ins: list[Moments | None]) -> tuple[int, Moments]:
    for i, m in enumerate(ins):
        if m is not None:
            return i, m
    raise ValueError("node has no signal input")


def broadcast_factor(value: Value | None, out: Value) -> float:
    """How many output elements each element of `value` feeds through broadcasting."""
    if value is None or value.numel in (None, 0) or out.numel is None:
        return 1.0
    return max(out.numel / value.numel, 1.0)


def dim(value: Value | None, axis: int) -> int | None:
    if value is None or value.shape is None or not value.shape:
        return None
    try:
        return value.shape[axis]
    except IndexError:
        return None


def spatial_lengths(value: Value | None, n: int) -> list[int | None]:
    if value is None or value.shape is None or len(value.shape) < n + 2:
        return [None] * n
    return list(value.shape[2 : 2 + n])


def all_gradients(ins: list[Moments | None], g: float) -> list[float | None]:
    return [None if m is None else g for m in ins]


def _reads(n_in: int, n_out: int, k: int, s: int, d: int, pb: int) -> tuple[np.ndarray, np.ndarray]:
    """The input index each (output position, tap) of a window op reads along one axis, and whether it lies inside
    the input (zero padding elsewhere)."""
    idx = np.arange(n_out)[:, None] * s + np.arange(k)[None, :] * d - pb
    return idx, (idx >= 0) & (idx < n_in)


# one axis of a window op: input length, output length, kernel, stride, dilation, leading padding
Axis = tuple[int, int, int, int, int, int]


def taps_inside(axis: Axis) -> np.ndarray:
    """How many taps of each output's window lie inside the input along one axis (fewer at a padded border)."""
    return _reads(*axis)[1].sum(axis=1)


def window_axes(node: Node) -> list[Axis] | None:
    """The window geometry of a conv, transposed conv or pool, per spatial axis; None where a length is unknown or
    beyond MAX_PROFILE_LENGTH."""
    a = node.attrs
    n = len(a["kernel"])
    lengths = spatial_lengths(node.inputs[0], n), spatial_lengths(node.outputs[0], n)
    if any(length is None or length > MAX_PROFILE_LENGTH for length in lengths[0] + lengths[1]):
        return None
    dilations, pads = a.get("dilations", [1] * n), a.get("pads_begin", [0] * n)
    return [
        (int(n_in), int(n_out), int(k), int(s), int(d), int(pb))
        for n_in, n_out, k, s, d, pb in zip(*lengths, a["kernel"], a["strides"], dilations, pads)
    ]


def conv_profile(profile: tuple[np.ndarray, ...] | None, axes: list[Axis] | None) -> tuple[np.ndarray, ...] | None:
    """Per-axis relative K after a window op with zero padding (docs/theory.md §2):
    p'(o) = (1/k) sum over valid taps t of p(o*s + t*d - pad)."""
    if axes is None:
        return None
    result = []
    for axis, (n_in, n_out, k, s, d, pb) in enumerate(axes):
        p = _along(profile, axis, n_in)
        idx, valid = _reads(n_in, n_out, k, s, d, pb)
        result.append(np.where(valid, p[np.clip(idx, 0, n_in - 1)], 0.0).sum(axis=1) / k)
    return tuple(result)


def coherent_border(axes: list[Axis] | None, mean_profile: tuple[np.ndarray, ...] | None = None) -> float | None:
    """The factor zero padding puts on a conv's channel offsets averaged over the map (M, S; docs/theory.md §2).
    Tap t is inside the input at a fraction f_t of the output positions, so the map's mean of the offset Wc is
    sum_t f_t W_t c, of energy sum_t f_t^2 / k of the interior's (per axis): less than K's border factor
    sum_t f_t / k. The difference is a mean that varies over the map, which is variance to a batch norm.
    Where the input's mean itself varies over the map (`mean_profile`, mean 1), f_t is the mean it reads
    through tap t: a tap that stays inside reads the centre's larger mean. None where the lengths are unknown."""
    if axes is None:
        return None
    factor = 1.0
    for axis, (n_in, n_out, k, s, d, pb) in enumerate(axes):
        idx, valid = _reads(n_in, n_out, k, s, d, pb)
        mean = _along(mean_profile, axis, n_in)[np.clip(idx, 0, n_in - 1)]
        inside = np.where(valid, mean, 0.0).mean(axis=0)
        factor *= float((inside**2).sum() / k)
    return factor


def centred_conv_profile(
    profile: tuple[np.ndarray, ...] | None,
    axes: list[Axis] | None,
    variance: float,
    offsets: float,
    mean_profile: tuple[np.ndarray, ...] | None = None,
) -> tuple[np.ndarray, ...] | None:
    """Per-axis relative K of a conv's output less each channel's mean over the batch and map: what a batch norm
    after it outputs (docs/theory.md §2). `profile` is conv_profile's (mean: the border factor), `variance` and
    `offsets` the interior energy of the part that varies within a channel and of its channel offsets. An offset
    sums the taps that lie inside the input, so at the border it is smaller than its mean over the map; after
    centring, position o keeps prod v(o) - 2 prod C(o) + prod c of the offset energy (per axis v(o): the share of
    taps valid at o, C(o) = sum_t a_t(o) f_t / k with f_t the share of positions where tap t is valid, c = sum_t
    f_t^2 / k): 0.25 at the border of a 7x7 map and 0.01 inside per axis. The centred map is flatter than K's
    profile, and a 3x3 conv after the norm reads it. Where the input's mean varies over the map (`mean_profile`),
    each valid tap reads the mean at its own position (a mean running from 0.3 to 1.5 of its average across a 7x7
    map, as deep in a MobileNet: a 5x5 conv's centred border keeps 0.85 of the offsets' energy, 1.34 with an even
    mean)."""
    if axes is None or profile is None or len(profile) != len(axes):
        return None
    valid = [_read_means(axis, _along(mean_profile, i, axis[0])) for i, axis in enumerate(axes)]
    shares = [(a * a).mean(axis=1) for a in valid]
    crossed = [a @ a.mean(axis=0) / a.shape[1] for a in valid]
    coherent = float(np.prod([c.mean() for c in crossed]))
    out = []
    for i, p in enumerate(profile):
        centred = shares[i] * _others(shares, i) - 2 * crossed[i] * _others(crossed, i) + coherent
        out.append(variance * p * _others(profile, i) + offsets * np.maximum(centred, 0.0))
    return tuple(out)


def _read_means(axis: Axis, mean: np.ndarray) -> np.ndarray:
    """(output position, tap): the relative mean each tap reads, 0 in the padding."""
    idx, valid = _reads(*axis)
    return np.where(valid, mean[np.clip(idx, 0, axis[0] - 1)], 0.0)


_PER_CHANNEL_AFFINE = frozenset({"batch_norm", "identity", "dropout", "cast"})


def activation_behind(value):
    """The pointwise node a value reaches through per-channel affine ops alone (one reader each), or None."""
    for _ in range(4):
        if value is None or len(value.consumers) != 1:
            return None
        reader = value.consumers[0]
        if reader.op == "pointwise" and len(reader.inputs) == 1:
            return reader
        if reader.op not in _PER_CHANNEL_AFFINE or reader.inputs[0] is not value:
            return None
        value = reader.outputs[0]
    return None


def _others(arrays, axis: int) -> float:
    """The product of the other axes' means: a separable 2-D quantity's marginal along `axis`."""
    return float(np.prod([float(a.mean()) for i, a in enumerate(arrays) if i != axis]))


MAX_PATTERN_POSITIONS = 256  # a map's positions up to which the channel means' pattern is carried (16x16)


def tap_reads(axes: list[Axis] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """For each output position of a window op (flattened) and each tap: the input position it reads (flattened)
    and whether that lies inside the input. None beyond MAX_PATTERN_POSITIONS positions on either side."""
    if axes is None:
        return None
    n_in = int(np.prod([a[0] for a in axes]))
    n_out = int(np.prod([a[1] for a in axes]))
    if n_in > MAX_PATTERN_POSITIONS or n_out > MAX_PATTERN_POSITIONS:
        return None
    index, valid = np.zeros((1, 1), dtype=int), np.ones((1, 1), dtype=bool)
    for axis in axes:
        idx, ok = _reads(*axis)
        # combine: position (p, q) with tap (t, u) reads input (i_p_t, j_q_u)
        index = (index[:, None, :, None] * axis[0] + np.clip(idx, 0, axis[0] - 1)[None, :, None, :]).reshape(
            index.shape[0] * idx.shape[0], index.shape[1] * idx.shape[1]
        )
        valid = (valid[:, None, :, None] & ok[None, :, None, :]).reshape(index.shape)
    return index, valid


def transposed_profile(axes: list[Axis] | None) -> tuple[np.ndarray, ...] | None:
    """Per-axis relative K of a transposed conv's output: the valid taps at each output position over the
    taps of its phase in the interior (edges and output_padding rows get fewer, docs/theory.md §3)."""
    if axes is None:
        return None
    result = []
    for n_in, n_out, k, s, d, pb in axes:
        o = np.arange(n_out)[:, None] + pb - np.arange(k)[None, :] * d
        hits = o % s == 0
        interior = hits.sum(axis=1)
        valid = (hits & (o // s >= 0) & (o // s < n_in)).sum(axis=1)
        result.append(np.where(interior > 0, valid / np.maximum(interior, 1), 1.0))
    return tuple(result)


def backward_border(
    axes: list[Axis] | None, transposed: bool = False, gradient: tuple[np.ndarray, ...] | None = None
) -> float:
    """Fraction of the interior backward fan-out that border inputs keep under zero padding: the
    (output, tap) pairs that land inside the input, over n_in * (k/s) (k for transposed convs), each pair weighted
    by the output gradient's relative energy at its position where that varies over the map (`gradient`)."""
    factor = 1.0
    for axis, (n_in, n_out, k, s, d, pb) in enumerate(axes or []):
        if transposed:  # each input writes k outputs: the same window geometry with the roles swapped
            factor *= _reads(n_out, n_in, k, s, d, pb)[1].sum() / (n_in * k)
        else:
            valid = _reads(n_in, n_out, k, s, d, pb)[1]
            factor *= (valid * _along(gradient, axis, n_out)[:, None]).sum() / (n_in * k / s)
    return float(factor)


def window_entries(axes: list[Axis], profile: tuple[np.ndarray, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """Over a window op's output map: the mean relative energy of the entries each window holds inside the input
    (the input's profile), and how many it holds (fewer at a padded border)."""
    energies, counts = [], []
    for i, axis in enumerate(axes):
        idx, valid = _reads(*axis)
        counts.append(valid.sum(axis=1))
        inside = np.where(valid, _along(profile, i, axis[0])[np.clip(idx, 0, axis[0] - 1)], 0.0).sum(axis=1)
        energies.append(inside / np.maximum(counts[-1], 1))
    return map_grid(energies), map_grid(counts).astype(int)


def map_scales(low: float, high: float, points: int) -> np.ndarray:
    """Energies spread evenly in log across a map's range, at which a rule computes what it then interpolates."""
    return np.exp(np.linspace(np.log(low), np.log(high), points)) if high > low * 1.0001 else np.array([low])


def map_grid(per_axis) -> np.ndarray:
    """The map of a product of per-axis factors (a profile's relative K at each position)."""
    grid = np.ones(())
    for p in per_axis:
        grid = np.multiply.outer(grid, p)
    return grid


def marginal_profiles(grid: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """Per-axis profiles (mean 1) of a map: its mean over the other axes; None where even or not positive."""
    axes = range(grid.ndim)
    marginals = tuple(grid.mean(axis=tuple(b for b in axes if b != a)) for a in axes)
    if any(not np.all(p > 0) for p in marginals):
        return None
    return normalize_profile(marginals)


def variance_profile(x: Moments) -> tuple[np.ndarray, ...] | None:
    """Per-axis relative energy of x's part that varies within a channel (K less the channel offsets' energy, M):
    where the mean varies over the map (`mean_profile`), the two parts vary differently, and a norm after a conv
    removes only the offsets: a max pool's border windows hold smaller maxima, mostly mean, so the border's
    centred variance is near the centre's where its K is half (§2)."""
    if x.profile is None or x.mean_profile is None or len(x.mean_profile) != len(x.profile) or not x.K > x.M:
        return x.profile
    squares = [u * u for u in x.mean_profile]
    out = []
    for i, (p, u2) in enumerate(zip(x.profile, squares)):
        others = float(np.prod([q.mean() for j, q in enumerate(squares) if j != i]))
        out.append(np.maximum(x.K * p - x.M * u2 * others, 0.01 * (x.K - x.M)))
    return normalize_profile(tuple(out))


def scaled_entries(x: Moments, scale: float) -> Moments:
    """x's entries at a position whose K is `scale` times the map's: the mean and the channels' offsets stay (a
    group norm's output keeps each channel's offset over the whole map), the rest scales."""
    m2 = x.m * x.m
    K = max(x.K * scale, m2)
    return Moments(x.m, K, min(max(x.M, m2), K), law=x.law)


def _along(profile: tuple[np.ndarray, ...] | None, axis: int, length: int) -> np.ndarray:
    if profile and len(profile) > axis and len(profile[axis]) == length:
        return profile[axis]
    return np.ones(length)


# ops whose input gradient has, at each position of the map, the same relative energy as the output's
_SAME_POSITIONS = frozenset(
    {
        "pointwise",
        "batch_norm",
        "group_norm",
        "instance_norm",
        "dropout",
        "identity",
        "cast",
        "add",
        "sub",
        "mul",
        "concat",
    }
)


def gradient_map_profiles(node: Node, out_profile: tuple[np.ndarray, ...] | None) -> list:
    """Each input's per-axis relative gradient energy over the spatial map (mean 1; None where even), from the
    output's: a conv spreads each output's gradient over the taps that land inside the input, so border inputs
    receive less, and the next conv back loses less at its own border than an even gradient would (§2)."""
    if node.op in ("conv", "avg_pool", "max_pool"):
        axes = window_axes(node)
        profile = None if axes is None else _conv_gradient_profile(out_profile, axes, _tap_share(node))
        return [profile] + [None] * (len(node.inputs) - 1)
    if node.op == "resize":
        return [_upsampled_gradient_profile(node, out_profile)] + [None] * (len(node.inputs) - 1)
    if out_profile is None or node.op not in _SAME_POSITIONS:
        return [None] * len(node.inputs)
    out = node.outputs[0].shape
    return [
        out_profile
        if value is not None and value.shape is not None and out is not None and value.shape[2:] == out[2:]
        else None
        for value in node.inputs
    ]


def nearest_factors(node: Node, profile: tuple[np.ndarray, ...] | None) -> list[int] | None:
    """A nearest resize's integer factor per spatial axis where `profile` covers those axes; else None."""
    scales = node.attrs.get("scales") or []
    if node.attrs.get("mode", "nearest") != "nearest" or profile is None or len(profile) != len(scales):
        return None
    if not all(s >= 1 and abs(s - round(s)) < 1e-6 for s in scales):
        return None
    return [int(round(s)) for s in scales]


def _upsampled_gradient_profile(node: Node, out_profile) -> tuple[np.ndarray, ...] | None:
    """Nearest upsampling by s: each input receives the sum of its s outputs per axis."""
    factors = nearest_factors(node, out_profile)
    if factors is None or any(len(p) % s for p, s in zip(out_profile, factors)):
        return None
    return normalize_profile(tuple(p.reshape(-1, s).mean(axis=1) for p, s in zip(out_profile, factors)))


def _tap_share(node: Node) -> int:
    """How a window op's output shares its gradient energy among its taps inside the input, as the power of
    1/(taps inside) each tap gets: a conv (and an average pool that divides by the whole window) gives every
    tap its weight whatever the border (0); a max pool sends the whole gradient to one tap, each inside tap
    equally likely (1); an average pool that divides by the taps inside gives each (1/taps)^2 of the energy (2)."""
    if node.op == "max_pool":
        return 1
    if node.op == "avg_pool" and not node.attrs.get("count_include_pad", 1):
        return 2
    return 0


def _conv_gradient_profile(out_profile, axes: list[Axis], share: int = 0) -> tuple[np.ndarray, ...] | None:
    result = []
    for axis, (n_in, n_out, k, s, d, pb) in enumerate(axes):
        q = _along(out_profile, axis, n_out)
        idx, valid = _reads(n_in, n_out, k, s, d, pb)
        q = q / np.maximum(valid.sum(axis=1), 1) ** share
        energy = np.zeros(n_in)
        np.add.at(energy, idx[valid], np.broadcast_to(q[:, None], idx.shape)[valid])
        if energy.mean() <= 0:
            return None
        result.append(energy / energy.mean())
    if all(np.allclose(p, 1.0, atol=1e-6) for p in result):
        return None
    return tuple(result)


def merged_map_profile(before: float, old, g: float, new):
    """Two consumers' gradient profiles over the same value's map, weighted by their gradients (None: even)."""
    if old is None and new is None:
        return None
    if before <= 0 or g <= 0:
        return new if before <= 0 else old
    shape = old if old is not None else new
    old = old if old is not None else tuple(np.ones(len(p)) for p in shape)
    new = new if new is not None else tuple(np.ones(len(p)) for p in shape)
    if len(old) != len(new) or any(len(a) != len(b) for a, b in zip(old, new)):
        return None
    return tuple((before * a + g * b) / (before + g) for a, b in zip(old, new))
