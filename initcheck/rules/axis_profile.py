"""Energy that varies along one axis: tokens of a sequence, channels of a concatenation (docs/theory.md §15).

A tensor's K is one number, but some ops read it position by position. A norm divides each token (or each
channel) by its own energy, so its backward is E_i[G_i / K_i], not E[G] / E[K]; a select of the class token
reads that token's energy, not the average. The profile records, along one axis, the relative K of each index
(mean 1); its twin on the backward side records the relative G. Both start where an op makes an axis uneven:
a concatenation of parts of different energy (a class token beside patch embeddings, DenseNet's features), a
causal attention (early queries average fewer values), a select (one token gets all the gradient). They follow
the axis through views, transposes and position-wise ops, and end where an op mixes or normalises along it.
Ops not listed here drop the profile: the scalar rules then hold as before.
"""

from __future__ import annotations

import numpy as np

from initcheck.moments import AxisProfile, profile_along

# ops that act on each entry alone: the profile passes as it is, forward and backward
POSITIONWISE = frozenset({"pointwise", "dropout", "cast", "identity", "where", "causal_mask", "prelu", "clip"})
COPIES = frozenset({"dropout", "cast", "identity"})
RESHAPES = frozenset({"reshape", "flatten", "squeeze", "unsqueeze"})
PER_POSITION_NORMS = frozenset({"layer_norm", "rms_norm"})  # normalise over trailing axes, each position alone
CHANNEL_GROUP_NORMS = frozenset({"group_norm", "instance_norm"})


def _rank(value) -> int | None:
    return len(value.shape) if value is not None and value.shape is not None else None


def length_along(value, axis: int) -> int | None:
    """The value's size along `axis`, None where unknown or the value has no such axis."""
    shape = value.shape if value is not None else None
    return shape[axis] if shape is not None and axis < len(shape) else None


def fits(along, value) -> bool:
    """Whether a profile (or a position kernel, anything with an axis and a length) matches the value's shape."""
    shape = value.shape if value is not None else None
    return along is not None and shape is not None and along.axis < len(shape) and shape[along.axis] == len(along)


# ---- placement: where an index of the input's axis lands in the output ------------------------------------


def _reshaped_axis(axis: int, shape_in, shape_out) -> int | None:
    """The output axis holding the input axis whole: same size, same number of elements before it."""
    if shape_in is None or shape_out is None or any(d is None for d in (*shape_in, *shape_out)):
        return None
    before = int(np.prod(shape_in[:axis], dtype=np.int64))
    for b, size in enumerate(shape_out):
        if size == shape_in[axis] and int(np.prod(shape_out[:b], dtype=np.int64)) == before:
            return b
    return None


def _perm(node, rank: int) -> list[int] | None:
    perm = node.attrs.get("perm")
    return None if perm is None else [int(p) % rank for p in perm]


def _slice_range(node, length: int) -> np.ndarray | None:
    a = node.attrs
    if "start" not in a:
        return None
    step = int(a.get("step", 1) or 1)
    end = a.get("end")
    indices = np.arange(length)[slice(int(a["start"]), None if end is None else int(end), step)]
    return indices if indices.size else None


def placement(node, axis: int, inp, out) -> tuple[int, np.ndarray | None] | None:
    """Where `axis` of a re-arranging or selecting op's input lands in its output, and which of its indices a
    slice along it keeps (None: all); None where it cannot be followed (a select of one index along it)."""
    rank_in = _rank(inp) or 0
    op = node.op
    if op in RESHAPES:
        b = _reshaped_axis(axis, inp.shape, out.shape)
        return None if b is None else (b, None)
    if op == "transpose":
        perm = _perm(node, rank_in)
        return None if perm is None or len(perm) != rank_in else (perm.index(axis), None)
    if op == "split":
        return (axis, None) if _split_axis(inp, out) not in (None, axis) else None
    if op in ("gather", "slice") and "axis" in node.attrs:
        picked_axis = int(node.attrs["axis"]) % max(rank_in, 1)
        if picked_axis != axis:
            b = _reshaped_axis_after_pick(axis, picked_axis, node)
            return None if b is None else (b, None)
        length = length_along(inp, axis)
        picked = _slice_range(node, length) if op == "slice" and length is not None else None
        return None if picked is None else (axis, picked)
    return None


def moved(node, profile: AxisProfile | None, inp, out) -> AxisProfile | None:
    """The profile of `out` for a re-arranging or selecting op (forward), None where it cannot follow."""
    if not fits(profile, inp):
        return None
    assert profile is not None
    placed = placement(node, profile.axis, inp, out)
    if placed is None:
        return None
    axis, picked = placed
    return profile_along(axis, profile.energy if picked is None else profile.energy[picked])


def _reshaped_axis_after_pick(axis: int, picked_axis: int, node) -> int | None:
    """A select removes its axis (the later ones shift down by one); a slice keeps every axis."""
    if node.op == "gather" and "index" in node.attrs:
        return axis - 1 if axis > picked_axis else axis
    if node.op == "slice":
        return axis
    return None


def picked_energy(node, profile: AxisProfile | None, inp) -> float:
    """The mean relative energy of what a select or slice along the profiled axis keeps (1 elsewhere)."""
    if not fits(profile, inp) or "axis" not in node.attrs:
        return 1.0
    assert profile is not None
    if int(node.attrs["axis"]) % max(_rank(inp) or 1, 1) != profile.axis:
        return 1.0
    if node.op == "gather" and "index" in node.attrs:
        return float(profile.energy[int(node.attrs["index"])])
    if node.op == "slice":
        picked = _slice_range(node, len(profile.energy))
        return float(profile.energy[picked].mean()) if picked is not None else 1.0
    return 1.0


def moved_back(node, profile: AxisProfile | None, inp, out) -> AxisProfile | None:
    """The gradient profile of `inp` from that of `out` for a re-arranging or selecting op, and the one a select
    or slice creates: the gradient lands only on what it picked."""
    rank_in = _rank(inp) or 0
    op = node.op
    if op in ("gather", "slice") and "axis" in node.attrs and inp is not None and inp.shape is not None:
        axis = int(node.attrs["axis"]) % max(rank_in, 1)
        if fits(profile, out):  # a pick along another axis (q, k and v out of one projection): the profile stays
            assert profile is not None
            kept = placement_back(node, profile.axis, inp, out)
            if kept is not None:
                return profile_along(kept, profile.energy)
        if axis == rank_in - 1 and rank_in >= 3:
            return None  # q, k and v features of a fused projection: its backward mixes them, and the tokens'
            # profiles of the three parts must still combine
        length = length_along(inp, axis)
        if length is not None and length > 1:
            mask = np.zeros(length)
            if op == "gather" and "index" in node.attrs:
                mask[int(node.attrs["index"]) % length] = 1.0
            elif op == "slice" and (picked := _slice_range(node, length)) is not None:
                mask[picked] = 1.0 if profile is None or profile.axis != axis else profile.energy[: len(picked)]
            else:
                return None
            return profile_along(axis, mask)
    if not fits(profile, out):
        return None
    assert profile is not None
    back = placement_back(node, profile.axis, inp, out)
    return None if back is None else profile_along(back, profile.energy)


def _split_axis(inp, out) -> int | None:
    """The one axis a split cuts (where its input and a part differ in size), None where unknown."""
    shape_in, shape_out = (v.shape if v is not None else None for v in (inp, out))
    if shape_in is None or shape_out is None or len(shape_in) != len(shape_out):
        return None
    cut = [i for i, (a, b) in enumerate(zip(shape_in, shape_out)) if a != b]
    return cut[0] if len(cut) == 1 else None


def placement_back(node, axis: int, inp, out) -> int | None:
    """The input axis that `axis` of a reshape's or transpose's output came from, or of a select's, slice's or
    split's along another axis (None: it cannot follow)."""
    if node.op == "split":
        return axis if _split_axis(inp, out) not in (None, axis) else None
    if node.op in ("gather", "slice") and "axis" in node.attrs:
        picked = int(node.attrs["axis"]) % max(_rank(inp) or 1, 1)
        if node.op == "slice":
            return axis if axis != picked else None
        if "index" in node.attrs:  # a select removes its axis
            return axis if axis < picked else axis + 1
        return None
    if node.op in RESHAPES:
        return _reshaped_axis(axis, out.shape, inp.shape if inp is not None else None)
    if node.op == "transpose":
        rank_in = _rank(inp) or 0
        perm = _perm(node, rank_in)
        return None if perm is None or len(perm) != rank_in else perm[axis]
    return None


# ---- merges -----------------------------------------------------------------------------------------------


def mixed(parts: list[tuple[float, AxisProfile | None]], out) -> AxisProfile | None:
    """Independent parts added: K_i = sum_p K_p e_p(i). `parts`: (K of the part, its profile on out's axes)."""
    profiled = [p for _, p in parts if p is not None and fits(p, out)]
    if not profiled:
        return None
    axis, length = profiled[0].axis, len(profiled[0].energy)
    total = np.zeros(length)
    for K, p in parts:
        total += K * (p.energy if p is not None and p.axis == axis and len(p.energy) == length else 1.0)
    return profile_along(axis, total)


def concatenated(node, ins, out) -> AxisProfile | None:
    """Parts side by side along the concat axis: each index keeps its part's energy (and variance). A part
    profiled along another axis: the parts mix there in proportion to their energy and size.
    `ins`: (value, (K, K - M, profile))."""
    rank = _rank(out)
    if rank is None or out.shape is None:
        return None
    axis = int(node.attrs.get("axis", 0)) % rank
    other = [p for _, (_, _, p) in ins if p is not None and p.axis != axis]
    if other:
        sizes = [length_along(v, axis) for v, _ in ins]
        if any(n is None for n in sizes):
            return None
        return mixed([(n * K, p) for n, (_, (K, _, p)) in zip(sizes, ins)], out)
    pieces, centered = [], []
    for value, (K, var, profile) in ins:
        n = length_along(value, axis)
        if n is None:
            return None
        pieces.append(K * (profile.energy if profile is not None and len(profile.energy) == n else np.ones(n)))
        centered.append(var * (profile.energy if profile is not None and len(profile.energy) == n else np.ones(n)))
    result = profile_along(axis, np.concatenate(pieces))
    variance = np.concatenate(centered)
    if result is None or variance.mean() <= 0:
        return result
    return AxisProfile(result.axis, result.energy, variance / variance.mean())


def _stretches(node, profile: AxisProfile | None, values, out) -> list[np.ndarray] | None:
    """Each concat part's stretch of a gradient profile along the concat axis; None where the profile is not along
    it or a part's length is unknown."""
    rank = _rank(out)
    if profile is None or rank is None or not fits(profile, out):
        return None
    if profile.axis != int(node.attrs.get("axis", 0)) % rank:
        return None
    result, start = [], 0
    for value in values:
        n = length_along(value, profile.axis)
        if n is None:
            return None
        result.append(profile.energy[start : start + n])
        start += n
    return result


def split_back(node, profile: AxisProfile | None, values, out) -> list[AxisProfile | None]:
    """A concat's gradient profile for each part: its stretch of the axis, or the same profile along another."""
    stretches = _stretches(node, profile, values, out)
    if stretches is not None:
        assert profile is not None
        return [profile_along(profile.axis, stretch) for stretch in stretches]
    along_other = profile is not None and fits(profile, out) and _rank(out) is not None
    return [profile if along_other and fits(profile, v) else None for v in values]


def part_shares(node, profile: AxisProfile | None, values, out) -> list[float]:
    """Each concat part's mean relative gradient over its stretch of the concat axis (1 where even)."""
    stretches = _stretches(node, profile, values, out)
    if stretches is None:
        return [1.0] * len(values)
    return [float(stretch.mean()) if stretch.size else 1.0 for stretch in stretches]


def per_index_ratio(grad: AxisProfile | None, energy: AxisProfile | None) -> tuple[float, AxisProfile | None]:
    """A per-index division by K (a norm's backward, G_i = G_out,i / K_i): E_i[q_i / e_i] and the input's
    gradient profile. Flat profiles give (1, None)."""
    if grad is None and energy is None:
        return 1.0, None
    ref = grad if grad is not None else energy
    assert ref is not None
    n = len(ref.energy)
    q = grad.energy if grad is not None and len(grad.energy) == n else np.ones(n)
    e = energy.energy if energy is not None and energy.axis == ref.axis and len(energy.energy) == n else np.ones(n)
    ratio = q / np.maximum(e, 1e-12)
    return float(ratio.mean()), profile_along(ref.axis, ratio)


# ---- attention ----------------------------------------------------------------------------------------------


def attention_rows(valid_keys, queries: int, keys: int) -> np.ndarray:
    """Keys each query row sees (all, or a causal mask's counts), one entry per query."""
    if valid_keys is not None and len(valid_keys) >= queries:
        return np.clip(np.asarray(valid_keys[:queries], dtype=np.float64), 1, keys)
    return np.full(queries, float(keys))


def attention_forward(rows: np.ndarray, values: AxisProfile | None) -> tuple[float, np.ndarray]:
    """Diffuse attention (each query spreads over its row's keys evenly, up to the logits' spread, which scales
    every row alike): the independent energy query t gets is ~ mean over its keys of their energy / n_t. Returns
    the factor on the scalar rule's independent part (1 for even values) and the per-query energy shape."""
    keys = int(rows.max())
    e = values.energy if values is not None and len(values.energy) == keys else np.ones(keys)
    reach = np.cumsum(e) / np.arange(1, keys + 1)  # mean energy of the first n keys
    per_query = reach[rows.astype(int) - 1] / rows
    return float(per_query.mean() / (1.0 / rows).mean()), per_query


def attention_backward(rows: np.ndarray, grads: AxisProfile | None) -> tuple[float, np.ndarray]:
    """The values' gradient: key s gets sum over the queries t that see it of G_t / n_t^2. Returns the factor
    on the scalar rule's independent part and the per-key gradient shape."""
    queries = len(rows)
    q = grads.energy if grads is not None and len(grads.energy) == queries else np.ones(queries)
    per_key = key_sums(rows, q / rows**2)
    flat = key_sums(rows, 1 / rows**2)
    return float(per_key.mean() / flat.mean()), per_key


def key_sums(rows: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """sum over the queries t that see key s (s < n_t) of weight_t, for every key: O(T), no T x T matrix."""
    keys = int(rows.max())
    by_last_key = np.bincount(rows.astype(np.int64) - 1, weights=weight, minlength=keys)
    return np.cumsum(by_last_key[::-1])[::-1]


# ---- dispatch ---------------------------------------------------------------------------------------------------


def _signals(node, ins):
    return [(v, x) for v, x in zip(node.inputs, ins) if v is not None and x is not None]


def _same_axis(node, profile: AxisProfile | None, inp, out) -> AxisProfile | None:
    """Broadcasts that keep the rank (expand, tile): the axis stays where its size does."""
    if not fits(profile, inp) or not fits(profile, out):
        return None
    return profile


def normalised_from(node, rank: int) -> int:
    """The first axis a layer or RMS norm normalises over (they act on each position before it alone)."""
    return int(node.attrs.get("axis", -1)) % max(rank, 1)


def forward(node, ins, out_value, out) -> AxisProfile | None:
    """The energy profile of one output of `node`, from its inputs' (Moments) profiles."""
    if out.axial is not None:  # the rule set it (attention) or passed its input's on (a copy)
        return out.axial if fits(out.axial, out_value) else None
    signals = _signals(node, ins)
    if not signals:
        return None
    value, first = signals[0]
    profile, op = first.axial, node.op
    if op in POSITIONWISE or op == "linear" and profile is not None and profile.axis < (_rank(value) or 0) - 1:
        if profile is not None and profile.centered is not None and op not in COPIES:
            profile = AxisProfile(profile.axis, profile.energy)  # the variance is the copy's alone
        return profile if fits(profile, out_value) else None
    if op in ("expand", "tile"):
        return _same_axis(node, profile, value, out_value)
    if op in RESHAPES or op in ("transpose", "gather", "slice", "split"):
        return moved(node, profile, value, out_value)
    if op in ("add", "sub"):
        parts = [(x.K, x.axial) for _, x in signals]
        parts += [(v.const.mean_sq, None) for v, x in zip(node.inputs, ins) if x is None and v is not None and v.const]
        return mixed(parts, out_value)
    if op == "mul":
        if len(signals) == 2 and signals[0][1].axial is not None and signals[1][1].axial is not None:
            a, b = signals[0][1].axial, signals[1][1].axial
            if a.axis == b.axis and len(a.energy) == len(b.energy):
                return profile_along(a.axis, a.energy * b.energy)
        return next((x.axial for _, x in signals if fits(x.axial, out_value)), None)
    if op == "concat":
        parts = [
            (
                v,
                (x.K, x.K - x.M, x.axial)
                if x is not None
                else (v.const.mean_sq, v.const.mean_sq - v.const.coherent, None),
            )
            for v, x in zip(node.inputs, ins)
            if v is not None and (x is not None or v.const is not None)
        ]
        return concatenated(node, parts, out_value)
    if op in PER_POSITION_NORMS:
        return profile if profile is not None and profile.axis >= normalised_from(node, _rank(value) or 0) else None
    if op == "batch_norm":
        training = node.attrs.get("training")
        return profile if profile is not None and not (training and profile.axis == 1) else None
    return None


def norm_ratio(node, x, grad: AxisProfile | None) -> tuple[float, AxisProfile | None]:
    """A normalisation's backward divides each position (token; channel for a train-mode batch norm) by its own
    energy: E_i[q_i / e_i] on the scalar rule and the input's gradient profile. Along normalised axes: (1, grad)."""
    energy = x.axial if x is not None else None
    rank = len(node.inputs[0].shape) if node.inputs[0] is not None and node.inputs[0].shape is not None else 0
    if node.op == "batch_norm":
        per_index = 1 if node.attrs.get("training") else None
    elif node.op in CHANNEL_GROUP_NORMS:
        per_index = 1  # each group of channels alone (a concatenation's parts fill whole groups)
    else:
        per_index = None  # positions before the normalised axes
    ref = grad if grad is not None else energy
    if ref is None:
        return 1.0, None
    axis = ref.axis
    if per_index is not None:
        separate = axis == per_index
    else:
        separate = node.op in PER_POSITION_NORMS and axis < normalised_from(node, rank)
    if not separate:
        return 1.0, grad
    if (
        (node.op == "batch_norm" or node.op in CHANNEL_GROUP_NORMS)
        and energy is not None
        and energy.centered is not None
    ):
        energy = AxisProfile(energy.axis, energy.centered)  # it divides by each channel's variance
    return per_index_ratio(grad, energy)


def norm_shared_ratio(node, x, grad: AxisProfile | None) -> float:
    """What a per-position norm does to the covariance between two positions, over what it does to G (§15). It
    scales position t's gradient by 1/sqrt(e_t), so a covariance spread evenly over the pairs takes
    E_{t != s}[1/sqrt(e_t e_s)] where G takes E_t[q_t / e_t]: a ViT's class token holds a hundredth of the patches'
    energy and nearly all the gradient, and its 100x is not what the patches' shared gradient gets."""
    energy = x.axial if x is not None else None
    rank = len(node.inputs[0].shape) if node.inputs[0] is not None and node.inputs[0].shape is not None else 0
    if energy is None or node.op not in PER_POSITION_NORMS or energy.axis >= normalised_from(node, rank):
        return 1.0
    if grad is not None and (grad.axis != energy.axis or len(grad.energy) != len(energy.energy)):
        return 1.0
    ratio, _ = per_index_ratio(grad, energy)
    scale = 1 / np.sqrt(np.maximum(energy.energy, 1e-12))
    n = len(scale)
    if n < 2 or not ratio > 0:
        return 1.0
    pairs = (scale.sum() ** 2 - (scale**2).sum()) / (n * (n - 1))
    return float(pairs / ratio)


def backward(node, ins, out_value, grad: AxisProfile | None, ctx) -> list[AxisProfile | None]:
    """The gradient profile of each input of `node` from its output's (None where flat or not followed)."""
    none: list[AxisProfile | None] = [None] * len(node.inputs)
    signals = _signals(node, ins)
    if not signals:
        return none
    op = node.op
    result = list(none)
    for i, (v, x) in enumerate(zip(node.inputs, ins)):
        if v is None or x is None:
            continue
        if op in POSITIONWISE or op in ("add", "sub", "linear", "expand", "tile"):
            mixes_it = op == "linear" and grad is not None and grad.axis == (_rank(v) or 0) - 1
            result[i] = grad if fits(grad, v) and not mixes_it else None
        elif op in RESHAPES or op in ("transpose", "gather", "slice", "split"):
            result[i] = moved_back(node, grad, v, out_value)
        elif op == "matmul":
            result[i] = _matmul_back(i, v, grad, out_value)
        elif op == "mul":
            other = [y for j, (w, y) in enumerate(zip(node.inputs, ins)) if j != i and y is not None]
            e = other[0].axial if other else None
            if not other and grad is not None:  # times a constant: its energy at each index weighs the gradient
                e = constant_profile(_other_constant(node, i), grad.axis, out_value)
            if grad is not None and e is not None and e.axis == grad.axis and len(e.energy) == len(grad.energy):
                result[i] = profile_along(grad.axis, grad.energy * e.energy)
            else:
                result[i] = grad if fits(grad, v) else (e if fits(e, v) else None)
        elif op in PER_POSITION_NORMS or op in CHANNEL_GROUP_NORMS or op == "batch_norm":
            result[i] = norm_ratio(node, x, grad)[1] if i == 0 else None
    if op == "concat":
        result = split_back(node, grad, list(node.inputs), out_value)
    return result


def _matmul_back(index: int, value, grad: AxisProfile | None, out) -> AxisProfile | None:
    """a @ b: a's rows get the gradient of the output's rows, b's columns that of its columns (or of the rows'
    `across`, where a profile along the rows states it)."""
    rank_out, rank = _rank(out), _rank(value)
    if grad is None or rank_out is None or rank is None or rank < 2:
        return None
    if index == 0 and grad.axis == rank_out - 2:
        found = profile_along(rank - 2, grad.energy)
    elif index == 1 and grad.axis == rank_out - 1:
        found = profile_along(rank - 1, grad.energy)
    elif index == 1 and grad.axis == rank_out - 2 and grad.across is not None:
        found = profile_along(rank - 1, grad.across)
    else:
        return None
    return found if fits(found, value) else None


def _other_constant(node, index: int):
    others = [v for j, v in enumerate(node.inputs) if j != index and v is not None and v.const is not None]
    return others[0] if len(others) == 1 else None


def position_table(value) -> np.ndarray | None:
    """A kept constant's values over its last two axes, positions by features (its leading axes of length 1, or
    copies: RoPE's cosines and sines per sample), None where the IR holds only its statistics."""
    a = value.array if value is not None else None
    if a is None or a.ndim < 2:
        return None
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(-1, a.shape[-2], a.shape[-1])[0]


def constant_profile(value, axis: int, out) -> AxisProfile | None:
    """The relative mean square of a constant at each index of `out`'s axis it broadcasts along (RoPE's sines
    and cosines along the tokens), None where it is flat there or unknown."""
    stats = value.const if value is not None else None
    rank_out = _rank(out)
    if stats is None or stats.axis_energy is None or rank_out is None or stats.mean_sq <= 0:
        return None
    own = axis - (rank_out - len(stats.shape))
    if own < 0 or stats.axis_energy[own] is None or len(stats.axis_energy[own]) != length_along(out, axis):
        return None
    return profile_along(axis, np.asarray(stats.axis_energy[own]) / stats.mean_sq)


def combined(G1: float, p1: AxisProfile | None, G2: float, p2: AxisProfile | None) -> AxisProfile | None:
    """The profile of a gradient summed from two consumers (G-weighted), None where their axes differ."""
    if p1 is None and p2 is None:
        return None
    if G1 == 0 and p2 is not None:  # the first consumer's, as it stated it
        return p2
    ref = p1 if p1 is not None else p2
    assert ref is not None
    n = len(ref.energy)
    e1 = p1.energy if p1 is not None and p1.axis == ref.axis and len(p1.energy) == n else None
    e2 = p2.energy if p2 is not None and p2.axis == ref.axis and len(p2.energy) == n else None
    if (p1 is not None and e1 is None) or (p2 is not None and e2 is None):
        return None
    return profile_along(ref.axis, G1 * (e1 if e1 is not None else 1.0) + G2 * (e2 if e2 is not None else 1.0))
