"""How unevenly one instance's channels vary, and what a per-channel norm's backward makes of it (docs/theory.md §17).

A layer's output channel c has variance v_c = w_c^T C w_c, w_c its row and C its input's covariance. Two things
make v_c differ across channels in one instance:
- the rows' energies differ: for a 1x1 convolution over 8 channels they scatter like chi-square with 8 degrees
  of freedom, a relative variance of 1/4 (`LinearStats.row_energy_cv2`, from the actual weights);
- the input's channels are correlated, so a row's variance depends on how it lies against the few directions
  the signal fills: v_c has relative variance 2 tr(C^2) / tr(C)^2 = 2 / r for r effective channels. Behind a
  1x1 convolution from 3 channels, 32 channels fill about 5 directions.

A train-mode batch norm divides each channel's gradient by its own v_c, so it sends back E_c[1/v_c] G, not
G / E_c[v_c]: 1/(1 - rho) more, rho the relative variance of v_c over channels (exact for gamma-distributed
v_c). The layer back reads the same rows: E[W_ci^2 / v_c] = E[W^2] / v for the rows' own scatter, so that part
leaves the gradient there; what the input's correlated or uneven channels (and zero padding) made of v_c stays,
E[1/R] E[R] with R = v_c / e_c the row's Rayleigh quotient (docs/theory.md §17).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from initcheck.moments import MeanPattern, Moments, profile_factor
from initcheck.rules import activations, axis_profile, neighbours
from initcheck.rules.common import conv_profile, dim, tap_reads, window_axes
from initcheck.stats import is_additive_mask

# ops that change each entry alone (or each channel by one factor that the ensemble keeps even), or move entries
# without touching the channel axis of a (batch, channel, ...) layout: both statistics stay where they were
_KEEPS = frozenset(
    {
        "pointwise",
        "dropout",
        "identity",
        "cast",
        "max_pool",
        "avg_pool",
        "global_avg_pool",
        "global_max_pool",
        "pad",
        "resize",
        "prelu",
    }
)
# norms rescale each channel (or each sample) but keep which channels move together
_KEEP_OVERLAP = _KEEPS | {"batch_norm", "group_norm", "instance_norm", "layer_norm", "rms_norm"}
MAX_RHO = 0.75  # the gamma closure's 1/(1 - rho) is at most 4x: beyond, a few near-silent channels dominate


def forward(node, ins, out_value, out) -> tuple[int, float] | None:
    """(axis, rho): the relative variance over channels of each channel's variance."""
    op = node.op
    x = ins[0] if ins else None
    if op in ("linear", "conv"):
        return _weighted(node, x, out.pattern if out is not None else None)
    if op in _KEEPS or (op == "batch_norm" and not node.attrs.get("training")):
        return x.dispersion if x is not None and _alone(ins) and _same_rank(node, out_value) else None
    if op in ("add", "sum"):
        return _summed(ins)
    if op == "concat":
        return _concatenated(node, ins, out_value)
    if op in ("flatten", "reshape", "squeeze"):
        return _kept_axis(node, x, x.dispersion if x is not None else None, out_value)
    return None


def overlap(node, ins, out_value, out, forward=None) -> tuple[int, float] | None:
    """(axis, 1/r): tr(C^2) / tr(C)^2 of the channel covariance, r the number of channels that vary independently.
    None: independent channels (1/C). `forward`: the moments so far (a residual branch's path back to its source)."""
    op = node.op
    x = ins[0] if ins else None
    if op in ("linear", "conv"):
        return _mapped_overlap(node, x)
    if op == "pointwise":
        return _activated_overlap(node, x, out_value) if x is not None and _alone(ins) else None
    if op in _KEEP_OVERLAP:
        return x.overlap if x is not None and _alone(ins) and _same_rank(node, out_value) else None
    if op in ("add", "sum"):
        return _summed_overlap(node, ins, out_value, forward or {})
    if op == "mul":
        return _gated_overlap(node, ins, out_value)
    if op == "concat":
        return _concatenated_overlap(node, ins, out_value)
    if op in ("flatten", "reshape", "squeeze"):
        return _kept_axis(node, x, x.overlap if x is not None else None, out_value)
    if op == "transpose":
        return _moved_overlap(node, x, out_value) if x is not None and x.overlap is not None else None
    return None


def _moved_overlap(node, x, out_value) -> tuple[int, float] | None:
    """A transpose moves the channel axis (a ViT's patch embeddings, (N, C, H, W) to (N, HW, C)); which channels
    move together stays."""
    placed = axis_profile.placement(node, x.overlap[0], node.inputs[0], out_value)
    return None if placed is None or placed[1] is not None else (placed[0], x.overlap[1])


def _alone(ins) -> bool:
    return bool(ins) and ins[0] is not None and all(other is None for other in ins[1:])


def _channel_axis(node) -> int | None:
    shape = node.outputs[0].shape
    if shape is None or len(shape) < 2:
        return None
    return 1 if node.op == "conv" else len(shape) - 1


def _fan(node) -> tuple[int, int, int] | None:
    """(channels each row reads, taps per channel, output channels) of a linear map or conv."""
    axis = _channel_axis(node)
    w = node.params.get("weight")
    if axis is None or w is None:
        return None
    groups = max(int(node.attrs.get("groups", 1) or 1), 1) if node.op == "conv" else 1
    channels = (dim(node.inputs[0], axis) or 0) // groups
    if channels <= 0:
        return None
    return channels, max(w.fan_in // channels, 1), dim(node.outputs[0], axis) or 0


def mixes_channels(node) -> bool:
    """Whether each row of a linear map or conv reads more than one input channel (a depthwise conv reads one)."""
    fan = _fan(node)
    return fan is not None and fan[0] > 1


def input_overlap(x, channels: int, axis: int) -> float:
    """1/r of a layer's input along `axis` (1/channels where nothing correlated them)."""
    if x is not None and x.overlap is not None and x.overlap[0] == axis:
        return x.overlap[1]
    return 1.0 / max(channels, 1)


def _weighted(node, x, pattern: MeanPattern | None) -> tuple[int, float] | None:
    """Rows of unequal energy, the input's own unevenness averaged over the channels each row sums, and its
    correlated channels (2 (1/r - 1/fan_in) over the row's channels and taps)."""
    w, axis, fan = node.params.get("weight"), _channel_axis(node), _fan(node)
    if w is None or axis is None or fan is None:
        return None
    channels, taps, _ = fan
    carried = 0.0
    if x is not None and x.dispersion is not None and x.dispersion[0] == axis:
        carried = x.dispersion[1] / channels
    # the Rayleigh quotient of a Gaussian row of n entries has relative variance 2 (n o - 1) / (n + 2)
    n = channels * taps
    correlated = 2 * max(n * input_overlap(x, channels, axis) / taps - 1.0, 0.0) / (n + 2)
    rows = w.row_energy_cv2
    rho = rows + (1 + rows) * carried + correlated + _padded_offsets(node, x, w, pattern)
    return (axis, rho) if rho > 0 else None


def _padded_offsets(node, x, w, pattern: MeanPattern | None) -> float:
    """A conv's channel means that vary over the map (its output's `pattern`: what zero padding leaves of its
    offsets after centring, docs/theory.md §2, and what it maps of its input's own pattern). Over the channels
    their energy is a chi-square in the directions their covariance over the positions spans: relative variance
    2 tr(C^2)/tr(C)^2, weighed by their share of the variance."""
    if node.op != "conv" or x is None or pattern is None or pattern.energy <= 0:
        return 0.0
    carried = x.pattern.energy if x.pattern is not None else 0.0
    inside = profile_factor(conv_profile(x.profile, window_axes(node)))
    varying = w.gain * max(x.K - x.M - carried, 0.0) * inside
    spread = 2 * float(np.sum(pattern.cov * pattern.cov)) / float(np.trace(pattern.cov)) ** 2
    return spread * (pattern.energy / (pattern.energy + varying)) ** 2


def _mapped_pattern(node, x, w) -> MeanPattern | None:
    """A conv's output pattern: its offsets' centred part (zero padding: fewer taps at the border) and its input's
    pattern through the weights, each tap reading its shifted window; centred over the output map."""
    reads = tap_reads(window_axes(node))
    if reads is None:
        return None
    index, valid = reads  # (P_out, k): the input position each tap reads, and whether it is inside
    taps = valid.shape[1]
    offsets = w.gain * max(x.M - x.m**2, 0.0) + x.m**2 * w.row_sum_sq + 2 * x.m * w.sb_mean
    centred = valid - valid.mean(axis=0)
    cov = offsets * (centred @ centred.T) / taps
    positions_in = int(np.prod([axis[0] for axis in window_axes(node) or []]))
    if x.pattern is not None and len(x.pattern.cov) == positions_in:
        inner = x.pattern.cov
        for t in range(taps):
            pick = np.where(valid[:, t], index[:, t], 0)
            cov = cov + w.gain / taps * np.outer(valid[:, t], valid[:, t]) * inner[np.ix_(pick, pick)]
    mean = cov.mean(axis=0)
    cov = cov - mean[None, :] - mean[:, None] + mean.mean()
    return MeanPattern(cov)


def pattern(node, ins, out_value, out) -> MeanPattern | None:
    """The output's channel means over the map (Moments.pattern), from the inputs'."""
    x = ins[0] if ins else None
    if x is None:
        return None
    op = node.op
    if op == "conv" and node.params.get("weight") is not None:
        return _mapped_pattern(node, x, node.params["weight"])
    if op == "concat":
        return _concatenated_pattern(node, ins, out_value)
    if x.pattern is None:
        return None
    if op == "avg_pool":
        return pooled_pattern(node, x)
    if op == "batch_norm":  # out.K - out.M is the normalised variance: the pattern keeps its share of it
        return MeanPattern(x.pattern.cov * max(out.K - out.M, 0.0) / max(x.K - x.M, 1e-300))
    if op == "pointwise" and _alone(ins):
        return MeanPattern(activations.mean_slope(node.attrs["program"], x) ** 2 * x.pattern.cov)
    if op in ("add", "sum"):
        parts = [v.pattern.cov for v in ins if v is not None and v.pattern is not None]
        return MeanPattern(sum(parts)) if len({p.shape for p in parts}) == 1 else None
    if op in ("dropout", "identity", "cast"):
        return x.pattern
    return None


def pooled_pattern(node, x) -> MeanPattern | None:
    """An average pool's output pattern: each output averages its window's channel means, A C A^T for the
    averaging matrix A (a smooth pattern, as zero padding leaves, keeps nearly all its energy where independent
    positions keep 1/A); centred over the output map."""
    if x is None or x.pattern is None:
        return None
    reads = tap_reads(window_axes(node))
    if reads is None or int(reads[0].max(initial=0)) >= len(x.pattern.cov):
        return None
    index, valid = reads
    divisor = valid.shape[1] if node.attrs.get("count_include_pad", 1) else np.maximum(valid.sum(axis=1), 1)[:, None]
    average = np.zeros((len(index), len(x.pattern.cov)))
    np.add.at(average, (np.repeat(np.arange(len(index)), valid.shape[1]), index.ravel()), (valid / divisor).ravel())
    cov = average @ x.pattern.cov @ average.T
    mean = cov.mean(axis=0)
    return MeanPattern(cov - mean[None, :] - mean[:, None] + mean.mean())


def _concatenated_pattern(node, ins, out_value) -> MeanPattern | None:
    """Channels side by side: the channel-averaged covariance of the means is the parts' by their channel counts
    (a part without a pattern has even channel means over the same map)."""
    found = _parts(node, ins, out_value)
    if found is None or found[0] != 1:
        return None
    parts = found[1]
    shapes = {x.pattern.cov.shape for _, x in parts if x.pattern is not None}
    if len(shapes) != 1:
        return None
    total = sum(n for n, _ in parts)
    return MeanPattern(sum(n / total * x.pattern.cov for n, x in parts if x.pattern is not None))


def _mapped_overlap(node, x) -> tuple[int, float] | None:
    """For random rows, tr(C'^2) / tr(C')^2 of C' = W C W^T is 1/C_out plus the input's over the row's taps; a
    depthwise conv maps each channel alone and keeps the input's."""
    axis, fan = _channel_axis(node), _fan(node)
    if axis is None or fan is None or fan[2] <= 0:
        return None
    channels, taps, out_channels = fan
    summed = dim(node.inputs[0], axis) or channels
    if channels == 1 and out_channels == summed:  # depthwise
        if x is None or x.overlap is None or x.overlap[0] != axis:
            return None
        floor = 1.0 / max(out_channels, 1)
        return (axis, floor + max(x.overlap[1] - floor, 0.0) * _kernels_overlap(node, x))
    value = 1.0 / out_channels + input_overlap(x, summed, axis) / taps
    return (axis, min(value, 1.0))


def _kernels_overlap(node, x) -> float:
    """A depthwise conv maps each channel with its own kernel: channels c and c' co-vary by w_cᵀ R w_c' times their
    inputs' covariance, R the taps' correlation over the map, so over independent kernels of second moment
    M = E[w wᵀ] the off-diagonal part of tr(C²)/tr(C)² keeps tr(R M R M) / tr(R M)² (1/k for k independent taps
    of zero-mean kernels; all of it for one shared kernel). M from the layer's sampled rows where it keeps them."""
    w = node.params["weight"]
    kernel = node.attrs.get("kernel") or []
    taps = int(np.prod(kernel)) if kernel else w.fan_in
    if taps != w.fan_in:
        return 1.0
    r = neighbours.tap_correlation(x.neighbours, kernel, node.attrs.get("dilations") or [1] * len(kernel))
    if w.sample_rows is not None:
        rows = np.asarray(w.sample_rows)
        m = rows.T @ rows / len(rows)
    else:
        m = np.eye(taps) / taps
    rm = r @ m
    return float(np.trace(rm @ rm) / np.trace(rm) ** 2)


def _gated_overlap(node, ins, out_value) -> tuple[int, float] | None:
    """A signal times a gate broadcast over its map (a squeeze-excitation's per-channel scale): each channel pair's
    covariance is scaled by E[s_c s_c'], near E[s]^2 for gates that vary little, so which channels move together
    stays."""
    full = [i for i, v in enumerate(node.inputs) if v is not None and v.shape == out_value.shape]
    if len(full) != 1 or len(ins) != 2 or any(m is None for m in ins):
        return None
    gate = node.inputs[1 - full[0]]
    if gate is None or gate.numel is None or out_value.numel is None or gate.numel >= out_value.numel:
        return None
    return ins[full[0]].overlap


def _activated_overlap(node, x, out_value) -> tuple[int, float] | None:
    """Correlations shrink by the activation's first Hermite weight a1^2 / Var(phi) (a ReLU: 0.73), their squares
    by its square; the diagonal stays."""
    if x.overlap is None or out_value.shape is None:
        return None
    axis, value = x.overlap
    channels = dim(out_value, axis) or 0
    if channels <= 0:
        return None
    floor = 1.0 / channels
    kept = activations.correlation_kept(node.attrs["program"], x.m, x.var)
    return (axis, floor + kept**2 * max(value - floor, 0.0))


def _same_rank(node, out_value) -> bool:
    src = node.inputs[0]
    return (
        src is not None
        and src.shape is not None
        and out_value.shape is not None
        and len(src.shape) == len(out_value.shape)
    )


def _scaled_variances(moments) -> list[float] | None:
    """Each input's variance over the largest (the formulas weigh by squares, which overflow for huge signals)."""
    variances = [x.var for x in moments]
    top = max(variances, default=0.0)
    if not (0 < top < math.inf):
        return None
    return [v / top for v in variances]


def _summed(ins) -> tuple[int, float] | None:
    """Independent branches: the variances add, so their spreads add with the squares of their shares."""
    axes = {x.dispersion[0] for x in ins if x is not None and x.dispersion is not None}
    parts = [x for x in ins if x is not None]
    weights = _scaled_variances(parts)
    if len(axes) != 1 or weights is None:
        return None
    axis = axes.pop()
    spread = sum((x.dispersion[1] if x.dispersion else 0.0) * w**2 for x, w in zip(parts, weights))
    return (axis, spread / sum(weights) ** 2)


def _summed_overlap(node, ins, out_value, forward) -> tuple[int, float] | None:
    """C1 + C2 of independent branches: tr of squares adds, with the cross term 2 tr(C1) tr(C2) / C. A residual
    branch f(x) ~ A x + noise adds the covariance between stream and branch, C A^T + A C, whose square has trace
    2 w tr(C^2) for random A, w the energy of its linear part over x's (docs/theory.md §17)."""
    tables = [t for v, x in zip(node.inputs, ins) if x is None and (t := _table_part(v, out_value))]
    axes = {x.overlap[0] for x in ins + tables if x is not None and x.overlap is not None}
    kept = [(v, x) for v, x in zip(node.inputs, ins) if x is not None and x.var > 0]
    weights = _scaled_variances([x for _, x in kept] + tables)
    if len(axes) != 1 or weights is None:
        return None
    axis = axes.pop()
    channels = dim(out_value, axis) or 0
    coupled = 0.0
    for (source, x), w_x in zip(kept, weights):
        for (branch, _), w_f in zip(kept, weights):
            if branch is not source and (share := _linear_share(branch, source, forward)) > 0:
                coupled += 2 * share * input_overlap(x, channels, axis) * w_x * w_f
    # a position table added to the signal is one more part: its own directions, weighed by its variance
    return _mixed_overlap([x for _, x in kept] + tables, weights, axis, out_value, coupled)


def _table_part(value, out_value):
    """A constant that varies over the positions (a position table, positions by features, the last two axes): as a
    part of the sum, its variance over the positions and tr(C^2)/tr(C)^2 of its covariance there. Whisper's
    sinusoids span few directions over a clip's 50 positions (1/r 0.12 measured at its first norm, 0.012 for
    independent features), and a query's gradient reads that through the keys and values it projects (§17)."""
    table = axis_profile.position_table(value)
    shape = out_value.shape
    if table is None or shape is None or len(shape) < 3 or not np.isfinite(table).all() or is_additive_mask(table):
        return None  # an attention mask added to the logits is not a table of positions
    if table.shape != (shape[-2], shape[-1]) or table.shape[0] < 2:
        return None
    centred = table - table.mean(axis=0)
    gram = centred @ centred.T if table.shape[0] <= table.shape[1] else centred.T @ centred
    trace = float(np.trace(gram))
    if trace <= 0:
        return None
    variance = trace / centred.size
    # T positions of any table span T directions at most: 1/T of the ratio is what T independent tokens would
    # show, which the attention rules count on their own; the table's own structure is the rest (a random table,
    # BERT's at init, has none: 1/d)
    positions, features = table.shape
    ratio = max(float(np.sum(gram * gram)) / trace**2 - 1.0 / positions, 1.0 / features)
    return Moments(0.0, variance, 0.0, overlap=(len(shape) - 1, ratio))


# ops through which a residual branch stays a linear function of its source (a norm rescales each token or
# channel by one factor)
_LINEAR_PATH = frozenset({"linear", "conv", "layer_norm", "rms_norm", "batch_norm", "group_norm", "instance_norm"})


def _linear_share(branch, source, forward, depth: int = 16) -> float:
    """The share of `branch`'s variance that is a linear map of `source` (0 where the path back leaves the ops
    that keep it: an attention, a product of two signals): each activation keeps its first Hermite weight."""
    share, value = 1.0, branch
    for _ in range(depth):
        if value is source:
            return share
        producer = value.producer if value is not None else None
        if producer is None or not producer.inputs or producer.inputs[0] is None:
            return 0.0
        if producer.op == "pointwise":
            x = forward.get(producer.inputs[0])
            if x is None or len(producer.inputs) > 1:
                return 0.0
            share *= activations.correlation_kept(producer.attrs["program"], x.m, x.var)
        elif producer.op not in _LINEAR_PATH | _KEEPS:
            return 0.0
        elif producer.op == "conv":
            # a position meets the stream's same position through the centre tap alone: 1/k^2 of a spatial
            # conv's energy (a depthwise 3x3 in a MobileNet block: 1/9)
            share /= max(int(np.prod(producer.attrs.get("kernel") or [1])), 1)
        value = producer.inputs[0]
    return 0.0


def _mixed_overlap(parts, weights, axis: int, out_value, coupled: float = 0.0) -> tuple[int, float] | None:
    """C = sum_p w_p C_p of independent parts: tr of squares adds, with the cross term 2 tr(C_p) tr(C_q) / C;
    `coupled`: what parts that are maps of each other add to the squares (in the weights' units)."""
    channels = dim(out_value, axis) or 0
    if channels <= 0 or sum(weights) <= 0:
        return None
    own = sum(input_overlap(x, channels, axis) * w**2 for x, w in zip(parts, weights))
    cross = sum(a * b for i, a in enumerate(weights) for b in weights[i + 1 :]) * 2 / channels
    return (axis, min((own + cross + coupled) / sum(weights) ** 2, 1.0))


def _concatenated(node, ins, out_value) -> tuple[int, float] | None:
    """Parts side by side along the channels: the within-part unevenness by size and energy (the parts' different
    levels are the concatenation's axial profile, which the norm reads on its own)."""
    found = _parts(node, ins, out_value)
    weights = _scaled_variances([x for _, x in found[1]]) if found is not None else None
    if found is None or weights is None:
        return None
    axis, parts = found
    weighted = sum(
        n * w**2 * (x.dispersion[1] if _on(x.dispersion, axis) else 0.0) for (n, x), w in zip(parts, weights)
    )
    total = sum(n * w**2 for (n, _), w in zip(parts, weights))
    return (axis, weighted / total) if total > 0 and weighted > 0 else None


def _concatenated_overlap(node, ins, out_value) -> tuple[int, float] | None:
    """Block-diagonal: tr of squares adds over the parts, the traces add. Parts stacked along another axis (a
    class token before the patch embeddings) mix their covariances, each by its rows and energy."""
    stacked = _stacked_overlap(node, ins, out_value)
    if stacked is not None:
        return stacked
    found = _parts(node, ins, out_value)
    weights = _scaled_variances([x for _, x in found[1]]) if found is not None else None
    if found is None or weights is None:
        return None
    axis, parts = found
    squares = sum(input_overlap(x, n, axis) * (n * w) ** 2 for (n, x), w in zip(parts, weights))
    total = sum(n * w for (n, _), w in zip(parts, weights))
    return (axis, squares / total**2) if total > 0 else None


def _stacked_overlap(node, ins, out_value) -> tuple[int, float] | None:
    """Parts concatenated along an axis other than the one their overlap is on: C = sum_p (n_p / N) C_p. A folded
    constant part (a class token) is the same in every sample and adds no covariance."""
    along = {x.overlap[0] for x in ins if x is not None and x.overlap is not None}
    rank = len(out_value.shape) if out_value.shape is not None else None
    if len(along) != 1 or rank is None or node.attrs.get("axis", 0) % rank in along:
        return None
    axis = node.attrs.get("axis", 0) % rank
    rows = [dim(value, axis) for value, x in zip(node.inputs, ins) if x is not None]
    parts = [x for x in ins if x is not None]
    weights = _scaled_variances(parts)
    if weights is None or any(n is None for n in rows):
        return None
    return _mixed_overlap(parts, [(n or 0) * w for n, w in zip(rows, weights)], along.pop(), out_value)


def _parts(node, ins, out_value):
    rank = len(out_value.shape) if out_value.shape is not None else None
    if rank is None:
        return None
    axis = node.attrs.get("axis", 0) % rank
    parts = []
    for value, x in zip(node.inputs, ins):
        n = dim(value, axis) if value is not None else None
        if n is None or x is None:
            return None
        parts.append((n, x))
    return axis, parts


def _on(stat, axis: int) -> bool:
    return stat is not None and stat[0] == axis


def _kept_axis(node, x, stat, out_value):
    """A reshape that leaves the axis where it was, with its length (a global pool's (N, C, 1, 1) flattened)."""
    if x is None or stat is None:
        return None
    axis = stat[0]
    src, dst = node.inputs[0].shape, out_value.shape
    if src is None or dst is None or len(dst) <= axis or src[: axis + 1] != dst[: axis + 1]:
        return None
    return stat


def part_closure(part: float, channels_per_group: int = 1) -> float:
    """E[1/u] E[u] for channel variances that scatter by `part` of rho alone (the gamma closure, eps aside)."""
    return gamma_closure(_per_group(part, channels_per_group))[0]


def jensen(x, channels_per_group: int = 1, leaving: float = 0.0, eps: float = 0.0) -> float:
    """E_c[(v + eps) / (v_c + eps)] for a norm that divides groups of `channels_per_group` channels by their pooled
    variance (batch norm, instance norm: 1), `eps` relative to the mean variance v: the gamma closure
    1/(1 - rho/channels) where eps is negligible, less where it is not (eps caps what a quiet channel gets);
    `leaving` a part of rho not counted."""
    rho = _norm_rho(x, channels_per_group, leaving)
    return 1.0 if rho is None else gamma_closure(rho, eps)[0]


def kept_variance(x, channels_per_group: int = 1, leaving: float = 0.0, eps: float = 0.0) -> float:
    """E_c[v_c / (v_c + eps)] over v / (v + eps): what a norm's eps keeps of its output's variance where the
    channels' variances scatter, relative to the mean variance's (1 where eps is negligible; the ratio is concave
    in v_c, so it is below 1)."""
    rho = _norm_rho(x, channels_per_group, leaving)
    return 1.0 if rho is None else gamma_closure(rho, eps)[1]


def _norm_rho(x, channels_per_group: int, leaving: float) -> float | None:
    if x is None or x.dispersion is None or x.dispersion[0] != 1:
        return None
    return _per_group(x.dispersion[1] - leaving, channels_per_group)


def _per_group(rho: float, channels_per_group: int) -> float:
    """A norm over groups of channels divides by their pooled variance: rho / g, capped at MAX_RHO."""
    return min(max(rho, 0.0) / max(channels_per_group, 1), MAX_RHO)


@lru_cache(maxsize=4096)
def _closure(rho: float, eps: float) -> tuple[float, float]:
    shape = 1.0 / rho
    if eps <= 0:  # the closed form: E[1/u] = k/(k-1) for u ~ Gamma(k, 1/k)
        return 1.0 / (1.0 - rho), 1.0
    # u = v_c / v ~ Gamma(shape, 1/shape) on a logarithmic grid: its weights p(u) u dt, normalised
    top = 1.0 + 16.0 / math.sqrt(shape) + 16.0 / shape
    t = np.linspace(math.log(1e-12), math.log(top), 8001)
    u = np.exp(t)
    log_density = shape * math.log(shape) + shape * t - shape * u - math.lgamma(shape)
    w = np.exp(log_density - log_density.max())
    w /= w.sum()
    return float(np.dot(w, (1.0 + eps) / (u + eps))), float(np.dot(w, u / (u + eps)) * (1.0 + eps))


def gamma_closure(rho: float, eps: float = 0.0) -> tuple[float, float]:
    """For channel variances v_c = v u, u gamma-distributed with mean 1 and relative variance rho, and a norm's eps
    relative to v: (E[(1 + eps) / (u + eps)], E[u / (u + eps)] (1 + eps)), the backward's and the forward's
    factors over the mean channel's (docs/theory.md §17)."""
    rho = round(rho, 4)  # cached on a grid; a part below it (a rounding's 0) is none
    if rho <= 0:
        return 1.0, 1.0
    return _closure(rho, float(f"{min(eps, 1e3):.3g}"))


def unreturned_part(value, x) -> float:
    """The part of a layer output's rho that the layer's own backward leaves in the gradient: all but its rows' own
    scatter (row_energy_cv2). A row's e_c / v_c = 1 / (ŵ_cᵀ C ŵ_c) depends on its direction alone, so what its
    input's correlated or uneven channels and zero padding's offsets make of v_c stays (docs/theory.md §17)."""
    producer = value.producer if value is not None else None
    if x is None or x.dispersion is None or producer is None or producer.op not in ("linear", "conv"):
        return 0.0
    w = producer.params.get("weight")
    return max(x.dispersion[1] - w.row_energy_cv2, 0.0) if w is not None else 0.0


def independent_features(x, node, n: int) -> float:
    """How many directions a per-position norm's features vary in independently, r = 1/overlap along its last
    axis, at most its n features: the per-sample mean square over them fluctuates with relative variance 2/r."""
    shape = node.inputs[0].shape if node.inputs[0] is not None else None
    value = input_overlap(x, n, len(shape) - 1) if shape is not None else 1.0 / max(n, 1)
    r = min(float(n), 1.0 / value) if value > 0 else float(n)
    return max(r, 3.0)  # E[1/ms] diverges below 3 directions (a χ² of 2 degrees or fewer)
