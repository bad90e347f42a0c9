"""Weighted layers: linear, conv, conv_transpose, matmul of two signals, embedding (docs/theory.md §2, §3, §9, §11)."""

from __future__ import annotations

import numpy as np

from initcheck.moments import Moments, clean, normalize_profile, profile_along, profile_factor
from initcheck.rules import activations, axis_profile, dispersion, position_kernel
from initcheck.rules.common import (
    activation_behind,
    backward_border,
    centred_conv_profile,
    coherent_border,
    conv_profile,
    dim,
    transposed_profile,
    variance_profile,
    window_axes,
)
from initcheck.rules.registry import Unsupported, backward_rule, forward_rule
from initcheck.stats import LinearStats


def _mapped(energy: float, x: Moments, w: LinearStats, border: float) -> float:
    """An energy (K, or a coherent part of it: M, S) through the layer: fan_in W2 (E - m^2) + m^2 R + 2 m Sb + b2."""
    return (w.gain * max(energy - x.m**2, 0.0) + x.m**2 * w.row_sum_sq + 2 * x.m * w.sb_mean) * border + w.bias_sq


def affine_shared(x: Moments, w: LinearStats, border: float = 1.0) -> float | None:
    """The shared-over-positions energy S through the layer: mapped like M (a vector every position carries)."""
    return None if x.S is None else _mapped(x.S, x, w, border)


def affine_moments(x: Moments, w: LinearStats, border: float = 1.0) -> tuple[float, float, float]:
    """docs/theory.md §2: K = fan_in W2 (K - m^2) + m^2 R + 2 m Sb + b2, m = m S + b, M likewise.

    `border` scales the weight-driven part for zero-padded maps (fewer valid taps at the edges)."""
    mean = x.m * w.row_sum_mean * border + w.bias_mean
    return mean, _mapped(x.K, x, w, border), _mapped(x.M, x, w, border)


def coherent_noise(x: Moments, w: LinearStats) -> float:
    """Relative instance noise of the output K from the input's per-channel offsets.

    The offsets form one fixed vector c; a fixed W maps it to |Wc|^2, a chi-square with ~fan_out/fan_in
    * out-units degrees of freedom around its mean, so the rule (exact in expectation over weights)
    is off by about sqrt(2 / C_out) times the coherent share of the output for this one network."""
    coherent = w.gain * max(x.M - x.m**2, 0.0)
    total = w.gain * x.var + x.m**2 * w.row_sum_sq + w.bias_sq
    units = max(w.fan_out, 1) if w.fan_out < w.fan_in * 8 else max(w.fan_in, 1)
    return (2.0 / units) ** 0.5 * coherent / total if total > 0 else 0.0


_NOISE_TOLERANCE = 0.1


@forward_rule("linear")
def linear_forward(node, ins, ctx):
    x = ins[0]
    if x is None:  # the multiplied operand is a constant computed from parameters (Mamba's exp(A_log)), not a signal
        return Unsupported("its input has no moments (a constant computed from parameters, not a signal)")
    w = node.params["weight"]
    mean, K, M = affine_moments(x, w)
    exact = x.exact and coherent_noise(x, w) <= _NOISE_TOLERANCE
    return clean(mean, K, M, exact, S=affine_shared(x, w), units=unit_offsets(x, w))


def unit_offsets(x: Moments, w: LinearStats) -> tuple[float, ...] | None:
    """Each output unit's known mean m S_k + b_k, where the layer has few units and these carry its offsets: the
    input's own channel offsets, unknown, add less than a tenth of their energy through the layer (a
    squeeze-excitation's pooled SiLU: a thousandth). Where both count, a Gaussian of their sum is as good (a narrow
    GELU stack: its third layer's K over 8 draws +0.06 in ln with it, +0.10 with the known part alone; §4)."""
    if w.units is None:
        return None
    units = tuple(x.m * row + bias for row, bias in w.units)
    known = sum(a * a for a in units) / len(units)
    return units if known > 0 and w.gain * max(x.M - x.m**2, 0.0) < 0.1 * known else None


@backward_rule("linear")
def linear_backward(node, ins, outs, grads, ctx):
    w: LinearStats = node.params["weight"]
    g = _own_rows_out(node, grads, ctx) * w.fan_out * w.w_sq
    _curved_slopes(node, g, ctx)
    _state_rayleigh_excess(node, g, ctx)
    return [g] + [None] * (len(ins) - 1)


def _own_rows_out(node, grads, ctx) -> float:
    """The output gradient without what a per-channel norm's 1/v_c added to it: v_c is made of this layer's own
    rows, and E[W_ci^2 / v_c] = E[W^2] / v exactly, so the input's gradient does not carry it (§17). A layer that
    mixes channels also takes back what the dense layer after it kept of its own norm's factor (its cross terms)."""
    out = node.outputs[0]
    taken = ctx.normalizer_excess.get(out, 0.0) + (
        ctx.rayleigh_excess.get(out, 0.0) if dispersion.mixes_channels(node) else 0.0
    )
    return max(grads[0] - taken, 0.0)


def _state_rayleigh_excess(node, g: float, ctx) -> None:
    """The input gradient of a layer that mixes channels carries E[1/R] E[R] of the norm after it (the part of
    the norm's factor its rows' directions made, not their energies); it leans against the channel directions
    the input's correlations favour, so the next layer back that mixes channels takes it back (§17)."""
    kept = ctx.rayleigh_stays.pop(node.outputs[0], 1.0)
    if kept > 1.0 and dispersion.mixes_channels(node):
        source = node.inputs[0]
        ctx.rayleigh_excess[source] = ctx.rayleigh_excess.get(source, 0.0) + g * (1.0 - 1.0 / kept)


@backward_rule("conv_transpose")
def conv_transpose_backward(node, ins, outs, grads, ctx):
    """Each input feeds (C_out/g) prod(k) outputs, fewer at the edges."""
    w: LinearStats = node.params["weight"]
    return [grads[0] * w.fan_out * w.w_sq * backward_border(window_axes(node), True)] + [None] * (len(ins) - 1)


@forward_rule("conv")
def conv_forward(node, ins, ctx):
    x = ins[0]
    a = node.attrs
    axes = window_axes(node)
    profile = conv_profile(x.profile, axes)
    w = node.params["weight"]
    exact = x.exact and (profile is not None or not any(a["pads_begin"] + a["pads_end"]))
    exact = exact and coherent_noise(x, _out_channels(w, node)) <= _NOISE_TOLERANCE
    border = profile_factor(profile)
    mean, K, _ = affine_moments(x, w, border)
    coherent = coherent_border(axes, x.mean_profile if x.profile is not None else None)
    coherent = border if coherent is None else coherent
    M = _mapped(x.M, x, w, coherent)
    S = affine_shared(x, w, coherent)
    # the channel offsets' interior energy, bias aside (a bias is even over the map)
    offsets = _mapped(x.M, x, w, 1.0) - w.bias_sq
    mean_profile = x.mean_profile if x.profile is not None else None
    varying = conv_profile(variance_profile(x), axes) if mean_profile is not None else profile
    centred = centred_conv_profile(varying, axes, w.gain * max(x.K - x.M, 0.0), offsets, mean_profile)
    units = unit_offsets(x, w) if not any(a["pads_begin"] + a["pads_end"]) else None  # padding makes them uneven
    return clean(
        mean, K, M, exact, S=S, profile=normalize_profile(profile), centred=normalize_profile(centred), units=units
    )


def _out_channels(w: LinearStats, node) -> LinearStats:
    """Conv statistics with fan_out = output channels (the units a channel offset is projected onto)."""
    from dataclasses import replace

    taps = int(np.prod(node.attrs["kernel"]))
    return replace(w, fan_out=max(w.fan_out // taps * node.attrs["groups"], 1))


@backward_rule("conv")
def conv_backward(node, ins, outs, grads, ctx):
    """G_x = (C_out/g) prod(k/s) E[W^2] G_y: the stride enters the backward fan-out (docs/theory.md §2); plus what
    the slopes of an activation behind it add where they co-vary through the inputs they share (§4)."""
    w: LinearStats = node.params["weight"]
    stride = float(np.prod(node.attrs["strides"]))
    border = backward_border(window_axes(node), False, ctx.backward_map.get(node.outputs[0]))
    g = _own_rows_out(node, grads, ctx) * w.fan_out * w.w_sq / stride * border
    _curved_slopes(node, g, ctx)
    _state_rayleigh_excess(node, g, ctx)
    pairs = _neighbour_slopes(node, ctx)
    if pairs > 0:
        out = node.outputs[0]
        fraction = min(ctx.backward_shared.get(out, 0.0) / grads[0], 1.0) if grads[0] > 0 else 0.0
        ctx.stated_shared.setdefault(node, {})[0] = g * fraction  # the slopes' co-variation is not shared
        # and it lies where the input deviates most: given x(p), the slopes that read it move by c1 w_t x(p)
        source = node.inputs[0]
        ctx.backward_weighted[source] = ctx.backward_weighted.get(source, 0.0) + g * pairs
    return [g * (1 + pairs)] + [None] * (len(ins) - 1)


def _curved_slopes(node, g: float, ctx) -> None:
    """An input entry x(p) is one term of each output it feeds, b = w x(p) of it; where the activation behind the
    outputs has a curved squared slope (a hard-swish, a SiLU), E[phi'^2 | b] grows with b^2, so the gradient x(p)
    receives grows with its own squared deviation: E[g^2 | x] = G (1 + gamma (x^2 / Var x - 1)), gamma the
    activation's `slope_curvature` times the rows' concentration (sum_j W_j^4 / |W|^4: 3/(n + 2) for n Gaussian
    inputs per output, 0.27 for a depthwise 3x3; a linear layer of many inputs adds next to nothing). The
    activation that made x weighs that part by its slopes where x deviates most (`backward_weighted`). A depthwise
    3x3 conv between two hard-swishes: +9% on the first's input gradient (docs/theory.md §4). A squared slope that
    bends down (a tanh's) would make that part negative; it is left out, not measured on the zoo."""
    w: LinearStats = node.params["weight"]
    activation = activation_behind(node.outputs[0])
    if activation is None or w.row_concentration <= 0:
        return
    x = ctx.forward.get(activation.inputs[0])
    if x is None:
        return
    gamma = activations.slope_curvature(activation.attrs["program"], x) * w.row_concentration
    if gamma > 0:
        source = node.inputs[0]
        ctx.backward_weighted[source] = ctx.backward_weighted.get(source, 0.0) + g * gamma


def _neighbour_slopes(node, ctx) -> float:
    """An activation (after a per-channel norm) behind a conv with few input channels per output: outputs at
    neighbouring positions read common inputs, so they correlate by r = sum_s w_s w_{s+d} / |w|^2, and the
    activation's slopes there by `slope_covariation` times r. The conv's backward sums those slopes at the same
    taps with the same weights: where the gradient above the activation is shared between positions, the input's
    G gains c * f * `_tap_pairs` (E[sum_{t != t'} w_t^2 w_t'^2 / |w|^2] over E|w|^2, (k^2 - 1)/(k^2 + 2) for k^2
    Gaussian taps at stride 1) over the input channels per group (c: the slopes' covariation, f: the shared
    fraction). The returned factor is relative to the scalar rule's input G. A depthwise 3x3 conv behind a
    norm-ReLU whose gradient comes from a global pooling: +23% (docs/theory.md §4). A strided conv reaches an
    input position through fewer taps, in `_tap_pairs`."""
    pairs = _tap_pairs(node.attrs.get("kernel", [1]), node.attrs.get("strides", [1]))
    if pairs <= 0 or any(int(d) != 1 for d in node.attrs.get("dilations", [1]) or [1]):
        return 0.0
    channels = node.inputs[0].shape[1] if node.inputs[0] is not None and node.inputs[0].shape else None
    groups = max(int(node.attrs.get("groups", 1) or 1), 1)
    activation = activation_behind(node.outputs[0])
    if activation is None or not channels:
        return 0.0
    x, after = ctx.forward.get(activation.inputs[0]), activation.outputs[0]
    grad = ctx.backward.get(after, 0.0)
    if x is None or grad <= 0:
        return 0.0
    shared = min(ctx.backward_shared.get(after, 0.0) / grad, 1.0)
    covariation = activations.slope_covariation(activation.attrs["program"], x)
    return covariation * shared * pairs / max(channels // groups, 1)


def _tap_pairs(kernel, strides) -> float:
    """E over input positions of sum_{t != t'} w_t^2 w_t'^2 / |w|^2 over the taps that reach one input position,
    over its E[sum_t w_t^2]: (sum_r n_r^2 - k^2) / (k^2 (k^2 + 2)) for Gaussian weights, n_r the taps that reach
    an input of residue class r modulo the stride ((k^2 - 1)/(k^2 + 2) at stride 1: every tap reaches each)."""
    taps = int(np.prod(kernel))
    if taps <= 1 or len(strides) != len(kernel):
        return 0.0
    squares = 1
    for k, s in zip(kernel, strides):
        counts = np.bincount(np.arange(int(k)) % max(int(s), 1))
        squares *= int(np.sum(counts**2))
    return (squares - taps) / (taps * (taps + 2))


@forward_rule("conv_transpose")
def conv_transpose_forward(node, ins, ctx):
    """Per output phase r: K_r = v sum_{t in T_r} E_t + m^2 S_r + 2 m Sb_r + b2 (docs/theory.md §3)."""
    x = ins[0]
    w: LinearStats = node.params["weight"]
    profile = transposed_profile(window_axes(node))
    border = profile_factor(profile)
    energy = np.array(w.phase_energy)
    driven = x.var * energy + x.m**2 * np.array(w.phase_row_sum_sq) + 2 * x.m * np.array(w.phase_sb)
    phases = driven + w.bias_sq
    coherent = max(x.M - x.m**2, 0.0) * energy + x.m**2 * np.array(w.phase_row_sum_sq) + 2 * x.m * np.array(w.phase_sb)
    mean = w.bias_mean  # tap sums of zero-mean weights average out over phases
    exact = x.exact and profile is not None
    return clean(
        mean,
        driven.mean() * border + w.bias_sq,
        coherent.mean() * border + w.bias_sq,
        exact,
        phases=tuple(float(p) for p in phases),
        profile=normalize_profile(profile),
    )


def _contracted(node) -> int | None:
    return dim(node.inputs[0], -1) or dim(node.inputs[1], -2)


def _signal_ancestors(value, limit: int = 400) -> set[int]:
    """ids of the computed values and model inputs a value descends from (bounded walk; constants excluded)."""
    seen: set = set()
    found: set = set()
    stack = [value]
    while stack and len(seen) < limit:
        v = stack.pop()
        if v is None or id(v) in seen:
            continue
        seen.add(id(v))
        if v.producer is not None or v.is_input:
            found.add(id(v))
        if v.producer is not None:
            stack.extend(v.producer.inputs)
    return found


def _share_source(a, b) -> bool:
    return bool(_signal_ancestors(a) & _signal_ancestors(b))


@forward_rule("matmul")
def matmul_forward(node, ins, ctx):
    """Product of two independent signals. Rows of a softmax times values: K = M_v + (K_v - M_v) E sum p^2
    (docs/theory.md §9); otherwise K = d K_a K_b + d(d-1) m_a^2 m_b^2 over the contracted size d."""
    a, b = ins[0], ins[1]
    if a is None or b is None:  # e.g. Mamba's state matrix, computed from parameters the frontend did not fold
        return Unsupported("one operand has no moments (a constant that is neither a folded weight nor a signal)")
    d = _contracted(node)
    exact = a.exact and b.exact and d is not None
    d = d or 1
    if a.simplex:
        sum_p2 = a.K * d
        shared = b.shared
        uneven, per_query = _query_energy(node, a, b)
        K = shared + (b.K - shared) * sum_p2 * uneven
        # What passes attention is the part the values share over one sequence's tokens (S, docs/theory.md §9):
        # exact only while it is small. When keys and values come from the same tokens (self-attention), v_j also
        # correlates with the logit s_ij through W_v W_k^T, a term ~ K_v K_q K_k / d_model: approximate then.
        coupled = _share_source(node.inputs[0], node.inputs[1])
        S = shared + (b.K - shared) * _column_weight(a.valid_keys, d)
        exact = exact and shared <= 0.05 * b.K and not coupled
        if per_query is not None:  # per query: the shared part plus its own share of the independent one
            per_query = shared + (b.K - shared) * sum_p2 * per_query / (1.0 / _rows(node, a)).mean()
        attended = _covarying_positions(node, a, b, ctx)
        if attended is not None:  # positions that co-vary beyond S (docs/theory.md §16)
            per_query = (per_query if per_query is not None else K) + attended["added"]
            K, S = K + float(attended["added"].mean()), attended["shared"]
            axis = len(node.outputs[0].shape) - 2
            kernel = position_kernel.kernel_along(axis, attended["cross"] / K) if K > 0 else None
            if kernel is not None:
                ctx.forward_kernel[node.outputs[0]] = kernel
        axial = None if per_query is None else profile_along(len(node.outputs[0].shape) - 2, per_query)
        return clean(b.m, K, b.M, exact, S=S, axial=axial)
    mean = d * a.m * b.m
    K = d * a.K * b.K + d * (d - 1) * a.m**2 * b.m**2
    return clean(mean, K, mean**2, exact, gaussian=d > 8)


def _covarying_positions(node, a, b, ctx) -> dict | None:
    """Diffuse attention's output where its values' positions co-vary or a causal mask makes them co-vary."""
    shape_v, shape_o = node.inputs[1].shape, node.outputs[0].shape
    if shape_v is None or shape_o is None or len(shape_v) < 2 or len(shape_o) < 2:
        return None
    axis = len(shape_v) - 2
    kernel = ctx.forward_kernel.get(node.inputs[1])
    kernel = kernel if kernel is not None and kernel.axis == axis and len(kernel.cross) == shape_v[axis] else None
    rows = _rows(node, a)
    if kernel is None and rows.min() == rows.max():
        return None  # every query sees every key: what they share is S, all of it
    return position_kernel.attended(rows, _contracted(node) or 1, b, kernel, axis)


def _rows(node, a) -> np.ndarray:
    shape_q, keys = node.inputs[0].shape, _contracted(node) or 1
    queries = shape_q[-2] if shape_q is not None and len(shape_q) >= 2 and shape_q[-2] else keys
    return axis_profile.attention_rows(a.valid_keys, int(queries), int(keys))


def _query_energy(node, a, b) -> tuple[float, np.ndarray | None]:
    """Attention over values whose energy varies over the keys, or a causal mask: the factor on the independent
    part and the per-query shape (docs/theory.md §15); (1, None) where every query gets the same."""
    if node.outputs[0].shape is None or len(node.outputs[0].shape) < 2:
        return 1.0, None
    rows = _rows(node, a)
    values = b.axial if b.axial is not None and b.axial.axis == len(node.inputs[1].shape or ()) - 2 else None
    if values is None and rows.min() == rows.max():
        return 1.0, None
    return axis_profile.attention_forward(rows, values)


def _column_weight(valid_keys, n: int) -> float:
    """sum_j pbar_j^2, pbar_j the attention weight key j gets on average over the queries: the share of the
    values' independent energy that every query's output has in common. Diffuse attention (uniform over each
    row's unmasked keys): 1/n without a mask; a causal mask gives the early keys more (~1.6/n)."""
    counts = np.asarray(valid_keys[:4096] if valid_keys is not None and len(valid_keys) else [n] * min(n, 4096))
    counts = np.clip(counts.astype(np.float64), 1, n)
    keys = np.arange(n)
    pbar = ((keys[None, :] < counts[:, None]) / counts[:, None]).mean(axis=0)
    return float((pbar**2).sum())


@backward_rule("matmul")
def matmul_backward(node, ins, outs, grads, ctx):
    """G_a = (columns of b) K_b G; G_b = (rows of a) K_a G. Attention values: each key's gradient sums the queries'
    gradients weighted by its column of p, so the part all queries share adds coherently (docs/theory.md §9)."""
    a, b = ins[0], ins[1]
    cols = dim(node.inputs[1], -1) or 1
    rows = dim(node.inputs[0], -2) or 1
    g = grads[0]
    grad_b = g * rows * a.K if a is not None else None
    if a is not None and a.simplex:
        keys = _contracted(node) or 1
        shared = min(ctx.backward_shared.get(node.outputs[0], 0.0), g)
        independent, coherent = (
            (g - shared) * rows * a.K,
            shared * rows * rows * _column_weight(a.valid_keys, keys) / keys,
        )
        grad_b = independent + coherent
        # every row of p sums to one, so two different keys' gradients share the output gradient's coherent part
        # and, of its independent part, what two weights of one row have in common: (1 - sum_s p_s^2) / (n(n - 1))
        apart = (g - shared) * rows * max(1.0 - keys * a.K, 0.0) / (keys * (keys - 1)) if keys > 1 else 0.0
        if node.outputs[0].shape is not None and len(node.outputs[0].shape) >= 2:
            grad_b = _values_gradient(node, a, independent, coherent, ctx)
            _state_weights_gradient(node, ctx)
        ctx.stated_shared.setdefault(node, {1: min(coherent + apart, grad_b)})  # unless the kernel stated its own
    grad_a = g * cols * b.K if b is not None else None
    stated = ctx.stated_logit_product.pop(node, None)
    if stated is not None and grad_a is not None and grad_b is not None:  # q k^T before a softmax (§16)
        queries, keys = stated  # each (factor, profile), or None: the scalar rule and the logits' own profile
        generic = axis_profile.backward(node, ins, node.outputs[0], ctx.backward_axial.get(node.outputs[0]), ctx)
        if queries is not None:
            grad_a, generic[0] = grad_a * queries[0], queries[1]
        if keys is not None:
            grad_b, generic[1] = grad_b * keys[0], keys[1]
        ctx.stated_axial[node] = generic
    return [grad_a, grad_b]


def _state_weights_gradient(node, ctx) -> None:
    """The attention weights' gradient, do_t . v_s, varies over the queries as the output's gradient does and
    co-varies between them as it does: the softmax before reads both (docs/theory.md §16)."""
    out = node.outputs[0]
    grads = ctx.backward_axial.get(out)
    rank_out, rank_p = len(out.shape), len(node.inputs[0].shape or ())
    if grads is not None and grads.axis != rank_out - 2:
        grads = None
    if rank_p < 2:
        return
    if grads is not None:
        stated = ctx.stated_axial.get(node, [None, None])
        ctx.stated_axial[node] = [profile_along(rank_p - 2, grads.energy), stated[1]]
    g = ctx.backward.get(out, 0.0)
    kernel = ctx.backward_kernel.get(out)
    queries = out.shape[-2]
    if g > 0 and queries is not None:
        kernel = kernel if kernel is not None and kernel.axis == rank_out - 2 and len(kernel) == queries else None
        ctx.weights_gradient[node] = position_kernel.relative_matrix(
            kernel, min(ctx.backward_shared.get(out, 0.0), g) / g, grads.energy if grads is not None else None, queries
        )


def _values_gradient(node, a, independent: float, coherent: float, ctx) -> float:
    """The values' G where the queries' gradient or their rows' lengths vary (docs/theory.md §15): key s gets
    sum_t G_t / n_t^2 over the queries that see it, and the coherent part (sum_t 1/n_t)^2; states the profile."""
    rows = _rows(node, a)
    grads = ctx.backward_axial.get(node.outputs[0])
    if grads is not None and grads.axis != len(node.outputs[0].shape) - 2:
        grads = None
    factor, per_key = axis_profile.attention_backward(rows, grads)
    keys = len(per_key)
    column = axis_profile.key_sums(rows, 1 / rows) ** 2
    inc, coh = independent * factor, coherent
    shape = inc * per_key / max(per_key.mean(), 1e-300) + coh * column / max(column.mean(), 1e-300)
    axis = len(node.inputs[1].shape) - 2 if node.inputs[1].shape is not None else None
    if axis is None or node.inputs[1].shape[axis] != keys:
        return inc + coh
    stated: list[position_kernel.PositionKernel | None] = [None, None]
    # the queries' gradients co-vary (a later causal attention summed them) or the mask makes the keys' co-vary
    kernel = ctx.backward_kernel.get(node.outputs[0])
    if kernel is not None and kernel.axis != len(node.outputs[0].shape) - 2:
        kernel = None
    total = inc + coh
    if kernel is not None or rows.min() != rows.max():
        g = ctx.backward.get(node.outputs[0], 0.0)
        shared = min(ctx.backward_shared.get(node.outputs[0], 0.0), g)
        summed = position_kernel.attended_back(rows, keys, g, shared, grads, kernel)
        if summed is not None:
            shape, total = shape + summed["added"], total + float(summed["added"].mean())
            stated[1] = position_kernel.kernel_along(axis, summed["cross"] / total) if total > 0 else None
            ctx.stated_kernel[node] = stated
            # what every key's gradient has in common: a key's gradient averages the queries that see it, and
            # early keys see most of the same queries
            ctx.stated_shared[node] = {1: min(summed["shared"], total)}
    ctx.stated_axial[node] = [None, profile_along(axis, shape)]
    return total


@forward_rule("embedding")
def embedding_forward(node, ins, ctx):
    """Uniform token ids: K = mean of the table's squares, M from its column means (docs/theory.md §11)."""
    t = node.params["table"]
    return clean(t.mean, t.mean_sq, node.params["coherent"], True)


@backward_rule("embedding")
def embedding_backward(node, ins, outs, grads, ctx):
    return [None] * len(ins)
