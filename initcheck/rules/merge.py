"""Merges of signals and arithmetic with constants (docs/theory.md §5).

Two signals here come from different roots (chains of one root are fused into `pointwise`), so
they are treated as independent: K_{a+b} = K_a + K_b + 2 m_a m_b, K_{ab} = K_a K_b.
"""

from __future__ import annotations

import numpy as np

from initcheck.gaussian import expect
from initcheck.moments import Moments, clean, normalize_profile
from initcheck.rules.axis_profile import constant_profile, part_shares, position_table
from initcheck.rules.common import broadcast_factor, dim
from initcheck.rules.registry import backward_rule, forward_rule
from initcheck.stats import MASKED, TensorStats


def _const(node, index: int) -> TensorStats | None:
    value = node.inputs[index]
    return value.const if value is not None else None


def _mix_profiles(parts: list[Moments], weights=None, centred: bool = False) -> tuple[np.ndarray, ...] | None:
    """Weighted average of per-axis profiles (separable approximation). Each part weighs by its K times `weights`
    (a concatenation's part sizes); `centred`: the parts' centred profiles (their K's where they have none) by
    size alone, since a per-channel norm, the one reader of a centred profile, gives every channel one variance."""
    profiles = [(p.centred if p.centred is not None else p.profile) if centred else p.profile for p in parts]
    weights = [1.0] * len(parts) if weights is None else weights
    energies = [w * (1.0 if centred else p.K) for w, p in zip(weights, parts)]
    if not any(profiles) or not sum(energies) > 0:
        return None
    return normalize_profile(_weighted_axes(profiles, energies))


def _mix_means(terms: list[tuple[float, tuple[np.ndarray, ...] | None]]) -> tuple[np.ndarray, ...] | None:
    """The mean profile of a sum of (signed mean, mean profile) terms: each profile weighed by its mean, even where
    a term has none (a norm's output, a constant). A residual sum adds a norm's output, mean 0, to a stream whose
    mean is lower at a padded map's border, so the sum's is too; the ReLU after it reads that (docs/theory.md §2)."""
    means, profiles = [m for m, _ in terms], [q for _, q in terms]
    if not any(profiles) or not abs(sum(means)) > 1e-6 * max(abs(m) for m in means):
        return None
    mixed = _weighted_axes(profiles, means)
    return normalize_profile(mixed) if all(np.all(p > 0) for p in mixed) else None


def _weighted_axes(profiles: list, weights: list[float]) -> tuple[np.ndarray, ...]:
    """Per axis, the weighted mean of per-axis profiles; a part without one (or of other lengths) is even."""
    ref = next(q for q in profiles if q)
    total = sum(weights)
    mixed = []
    for axis, base in enumerate(ref):
        acc = np.zeros_like(base)
        for weight, q in zip(weights, profiles):
            acc += weight / total * (q[axis] if q and len(q) == len(ref) and len(q[axis]) == len(base) else 1.0)
        mixed.append(acc)
    return tuple(mixed)


def _is_additive_mask(value) -> bool:
    return (
        value is not None
        and value.array is not None
        and value.array.dtype.kind == "f"
        and bool((value.array <= MASKED).any())
    )


def _signed_sum(node, ins, signs) -> Moments:
    m = K = M = 0.0
    exact, gaussian, parts = True, True, []
    S = 0.0
    stated = False  # a constant whose positions share less than its squared mean says (a position table)
    zeros = 1.0  # P(every term is 0), for a sum of nonnegative terms (a zero branch counts as one)
    nonnegative = True
    means: list[tuple[float, tuple[np.ndarray, ...] | None]] = []  # each term's signed mean and its profile
    for i, sign in enumerate(signs):
        x = ins[i]
        if x is None:
            c = _const(node, i)
            # a mask (very negative = masked, counted by _mask_keys) or another non-signal tensor: adds 0
            if c is None or _is_additive_mask(node.inputs[i]):
                continue
            between = _shared_between_positions(c)
            x = Moments(c.mean, c.mean_sq, between, S=between)
            nonnegative = nonnegative and c.mean_sq == 0
            stated = stated or between != c.coherent
        else:
            parts.append(x)
            exact, gaussian = exact and x.exact, gaussian and x.gaussian
            nonnegative = nonnegative and (x.positive is not None or x.K == 0) and sign > 0
            zeros *= 1 - (x.positive or 0.0)
        means.append((sign * x.m, x.mean_profile if x.profile is not None else None))
        K += x.K + 2 * sign * m * x.m
        M += x.M + 2 * sign * m * x.m
        S += x.shared + 2 * sign * m * x.m
        m += sign * x.m
    keys = next((p.valid_keys for p in parts if p.valid_keys is not None), _mask_keys(node))
    shared = S if stated or any(p.S is not None for p in parts) else None
    return clean(
        m,
        K,
        M,
        exact,
        S=shared,
        profile=_mix_profiles(parts),
        mean_profile=_mix_means(means),
        gaussian=gaussian,
        valid_keys=keys,
        positive=1 - zeros if nonnegative and parts else None,
    )


def _shared_between_positions(c: TensorStats) -> float:
    """What two different positions of a constant share, mean over pairs of a_s . a_t per channel (its M and S):
    its squared mean over the positions (`coherent`) includes each position with itself, 1/P of its energy,
    which a table of independent rows (GPT-2's, ViT's position embeddings) does not share (docs/theory.md §9)."""
    sizes = [d for d in c.shape if d > 1]
    positions = c.numel // sizes[-1] if len(sizes) > 1 else 1
    if positions <= 1:
        return c.coherent
    return max((positions * c.coherent - c.mean_sq) / (positions - 1), 0.0)


def _mask_keys(node) -> np.ndarray | None:
    """Unmasked keys per row when one operand is a constant additive mask (very negative = masked)."""
    for v in node.inputs:
        if _is_additive_mask(v) and v.array.ndim >= 2:
            rows = (v.array > MASKED).reshape(-1, v.array.shape[-1]).sum(axis=1)
            if rows.min() < v.array.shape[-1]:
                return rows
    return None


@forward_rule("add", "sum")
def add_forward(node, ins, ctx):
    return _signed_sum(node, ins, [1] * len(ins))


@forward_rule("sub")
def sub_forward(node, ins, ctx):
    return _signed_sum(node, ins, [1, -1])


@backward_rule("add", "sum", "sub")
def add_backward(node, ins, outs, grads, ctx):
    """An operand broadcast along a sample's positions sums their gradients: the part they share adds coherently
    (n^2 of it, docs/theory.md §9), the rest n times; along the batch the samples' gradients are independent."""
    out = node.outputs[0]
    g, shared = grads[0], min(ctx.backward_shared.get(out, 0.0), grads[0])
    return [None if x is None else _summed_back(node.inputs[i], out, g - shared, shared) for i, x in enumerate(ins)]


def _summed_back(value, out, varying: float, coherent: float) -> float:
    """The gradient of an operand broadcast to `out`: its copies' gradients summed, the part a sample's positions
    share (`coherent`) n^2 times within a sample, the rest n times; the samples' gradients are independent."""
    n = broadcast_factor(value, out)
    samples = _batch_broadcast(value, out) if n > 1 else 1.0
    positions = n / samples
    return samples * (positions * varying + positions * positions * coherent)


def _batch_broadcast(value, out) -> float:
    """How many samples each element of `value` feeds: 1 where it has the batch dimension of its own."""
    if value.shape is None or not out.shape or out.shape[0] in (None, 1):
        return 1.0
    own = len(value.shape) == len(out.shape) and value.shape[0] != 1
    return 1.0 if own else float(out.shape[0])


def _operand(node, ins, i) -> Moments | None:
    if ins[i] is not None:
        return ins[i]
    c = _const(node, i)
    return Moments(c.mean, c.mean_sq, c.coherent) if c is not None else None


@forward_rule("mul")
def mul_forward(node, ins, ctx):
    a, b = _operand(node, ins, 0), _operand(node, ins, 1)
    if a is None or b is None:  # mask multiplication: pass the signal through
        x = a or b
        return x
    exact = all(x.exact for x in ins if x is not None)
    both = ins[0] is not None and ins[1] is not None
    # the operand that varies over the map keeps its profile: a gate broadcast over it scales every position alike
    mapped = next((x for x in ins if x is not None and x.profile is not None), ins[0] or ins[1])
    S = a.shared * b.shared if a.S is not None or b.S is not None else None
    index = 0 if ins[0] is not None else 1
    K = a.K * b.K * (1.0 if both else _constant_overlap(node, index, ins[index].axial))
    return clean(
        a.m * b.m, K, a.M * b.M, exact, S=S, profile=mapped.profile, mean_profile=mapped.mean_profile, gaussian=not both
    )


def _constant_overlap(node, index: int, profile) -> float:
    """E_i[p_i c_i] for a signal (or gradient) profiled p along an axis where the constant's energy c varies
    (RoPE's sines: small at the first tokens, where a causal attention's keys get most gradient); 1 elsewhere."""
    if profile is None:
        return 1.0
    if profile.across is not None and (both := _over_both_axes(node.inputs[1 - index], profile)) is not None:
        return both
    weights = constant_profile(node.inputs[1 - index], profile.axis, node.outputs[0])
    if weights is None or len(weights.energy) != len(profile.energy):
        return 1.0
    return float(np.mean(profile.energy * weights.energy))


def _over_both_axes(constant, profile) -> float | None:
    """E[p_t w_j c_tj^2] / E[c^2] for a gradient profiled along positions (p) and features (w, `across`) times a
    constant table c over the same two axes (RoPE's rotated half reads the fast-turning features); None where the
    table's values are not kept or do not match."""
    table = position_table(constant)
    if table is None:
        return None
    table = table**2
    if table.shape != (len(profile.energy), len(profile.across)) or table.mean() <= 0:
        return None
    return float((profile.energy[:, None] * profile.across[None, :] * table).mean() / table.mean())


@backward_rule("mul")
def mul_backward(node, ins, outs, grads, ctx):
    out = node.outputs[0]
    g, shared = grads[0], min(ctx.backward_shared.get(out, 0.0), grads[0])
    result: list[float | None] = []
    for i, x in enumerate(ins):
        other = _operand(node, ins, 1 - i)
        k_other, s_other = (other.K, other.shared) if other is not None else (1.0, 0.0)  # a mask: passes g
        n = broadcast_factor(node.inputs[i], out)
        if x is None:
            result.append(None)
        elif n > 1:  # a broadcast operand (a gate) sums n terms: their shared parts add coherently
            varying = (g - shared) * k_other + shared * (k_other - s_other)
            result.append(_summed_back(node.inputs[i], out, varying, shared * s_other))
        elif ins[1 - i] is None and other is not None:
            result.append(g * k_other * _constant_overlap(node, i, ctx.backward_axial.get(out)))
        else:
            result.append(g * k_other)
    return result


def _inverse_square(node, ins) -> float | None:
    """E[1/b^2] of the divisor: from the constant's statistics, or by quadrature for a signal."""
    if ins[1] is not None:
        b = ins[1]
        return expect(lambda z: 1.0 / np.maximum(z * z, 1e-30), b.m, b.var)
    recip = node.params.get("reciprocal")
    return recip.mean_sq if recip is not None else None


@forward_rule("div")
def div_forward(node, ins, ctx):
    a = _operand(node, ins, 0)
    inv_sq = _inverse_square(node, ins)
    if a is None or inv_sq is None:
        return (ins[0] or ins[1]).approx()
    if ins[1] is not None:
        inv_mean = expect(lambda z: 1.0 / np.where(np.abs(z) < 1e-15, 1e-15, z), ins[1].m, ins[1].var)
    else:
        inv_mean = node.params["reciprocal"].mean
    exact = all(x.exact for x in ins if x is not None) and ins[0] is not None
    return clean(
        a.m * inv_mean,
        a.K * inv_sq,
        a.M * inv_sq,
        exact,
        S=a.S * inv_sq if a.S is not None else None,
        profile=a.profile,
        gaussian=ins[1] is None and a.gaussian,
    )


@backward_rule("div")
def div_backward(node, ins, outs, grads, ctx):
    """d(a/b)/da = 1/b; d(a/b)/db = -a/b^2 (independent operands)."""
    out = node.outputs[0]
    inv_sq = _inverse_square(node, ins) or 1.0
    ga = None if ins[0] is None else grads[0] * inv_sq * broadcast_factor(node.inputs[0], out)
    gb = None
    if ins[1] is not None:
        a = _operand(node, ins, 0)
        inv4 = expect(lambda z: 1.0 / np.maximum(z**4, 1e-30), ins[1].m, ins[1].var)
        gb = grads[0] * (a.K if a else 1.0) * inv4 * broadcast_factor(node.inputs[1], out)
    return [ga, gb]


@forward_rule("concat")
def concat_forward(node, ins, ctx):
    """Size-weighted averages of m, K and M over the parts (docs/theory.md §5)."""
    axis = node.attrs.get("axis", 0)
    parts, weights = [], []
    for i, x in enumerate(ins):
        if node.inputs[i] is not None and node.inputs[i].numel == 0:  # an empty cache tensor adds nothing
            continue
        if x is None:
            c = _const(node, i)
            if c is None:
                continue
            x = Moments(c.mean, c.mean_sq, c.coherent)
        parts.append(x)
        weights.append(dim(node.inputs[i], axis))
    known = all(w is not None for w in weights)
    w = np.array(weights if known else [1] * len(parts), dtype=float)
    w = w / w.sum()
    m = float(sum(wi * p.m for wi, p in zip(w, parts)))
    K = float(sum(wi * p.K for wi, p in zip(w, parts)))
    M = float(sum(wi * p.M for wi, p in zip(w, parts)))
    S = float(sum(wi * p.shared for wi, p in zip(w, parts))) if any(p.S is not None for p in parts) else None
    exact = known and all(p.exact for p in parts)
    # channels side by side keep each position's energy as their parts' sum over the map (a DenseNet's padded
    # convs beside the block input): the next padded conv reads that profile
    beside = _along_channels(node)
    profile = _mix_profiles(parts, list(w)) if beside else None
    centred = _mix_profiles(parts, list(w), centred=True) if beside else None
    # parts of different scale make a mixture, not one Gaussian
    alike = (
        max(p.K for p in parts) <= 1.1 * min(p.K for p in parts)
        and max(abs(p.m) for p in parts) <= 0.1 * K**0.5 + 1e-12
    )
    return clean(
        m, K, M, exact, S=S, gaussian=all(p.gaussian for p in parts) and alike, profile=profile, centred=centred
    )


def _along_channels(node) -> bool:
    """A concatenation along the channels of a (batch, channel, spatial...) map."""
    shape = node.outputs[0].shape
    return shape is not None and len(shape) >= 3 and node.attrs.get("axis", 0) % len(shape) == 1


@backward_rule("concat")
def concat_backward(node, ins, outs, grads, ctx):
    """Each part gets the gradient of its stretch: the output's where even, its share of the profile where the
    gradient varies along the concat axis (a norm behind it divides parts of different energy, §15)."""
    grad = ctx.backward_axial.get(node.outputs[0])
    shares = part_shares(node, grad, list(node.inputs), node.outputs[0])
    return [None if x is None else grads[0] * share for x, share in zip(ins, shares)]
