"""Softmax and log-softmax over N logits (docs/theory.md §9, §11).

E sum p^2 and the backward factor have no closed form outside the diffuse regime, so they are
integrated by a fixed-seed Monte Carlo over rows of N(0, sigma^2) logits (deterministic; ~1% noise),
honouring masks (rows with fewer valid keys, e.g. causal attention).
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np

from initcheck import pointwise
from initcheck.moments import AxisProfile, clean, profile_along
from initcheck.rules import axis_profile, dispersion, position_kernel
from initcheck.rules.common import dim
from initcheck.rules.registry import backward_rule, forward_rule

_SAMPLES = 1 << 18
_MAX_ROW = 1 << 20  # longer rows are extrapolated: 64 sampled rows of 2^30 logits would need 512 GB


@lru_cache(maxsize=1024)
def softmax_statistics(sigma: float, n: int, valid: tuple[int, ...] | None = None) -> dict[str, float]:
    """For rows of n iid N(0, sigma^2) logits: E sum p^2, E sum p^2 (1 - 2p + sum p^2), E max p,
    entropy / ln n. `valid` lists the number of unmasked keys per row (cycled)."""
    if n > _MAX_ROW and not valid:
        return _extrapolated(sigma, n)
    rows = max(64, min(4096, _SAMPLES // max(n, 1)))
    rng = np.random.default_rng(12345)
    logits = rng.standard_normal((rows, n)) * sigma
    if valid:
        counts = np.resize(np.array(valid), rows)
        logits = np.where(np.arange(n)[None, :] < counts[:, None], logits, -np.inf)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    sum_p2 = (p * p).sum(axis=1)
    back = (p * p * (1 - 2 * p + sum_p2[:, None])).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return {
        "sum_p2": float(sum_p2.mean()),
        "backward": float(back.mean()),
        "max_p": float(p.max(axis=1).mean()),
        "entropy_ratio": float(entropy.mean() / np.log(n)) if n > 1 else 1.0,
    }


def _extrapolated(sigma: float, n: int) -> dict[str, float]:
    """Rows longer than _MAX_ROW: no single logit dominates there, so p ~ e^z / (n E e^z): sums of p^2 scale
    as 1/n, the max as e^(sigma z_max(n)) / n with z_max the expected maximum of n normals, and the entropy
    grows by ln(n / n0)."""
    base = softmax_statistics(sigma, _MAX_ROW)
    shrink = _MAX_ROW / n
    entropy = base["entropy_ratio"] * np.log(_MAX_ROW) + np.log(1 / shrink)
    max_p = base["max_p"] * shrink * np.exp(sigma * (_expected_max(n) - _expected_max(_MAX_ROW)))
    return {
        "sum_p2": base["sum_p2"] * shrink,
        "backward": base["backward"] * shrink,
        "max_p": float(min(max_p, 1.0)),
        "entropy_ratio": float(entropy / np.log(n)),
    }


def _expected_max(n: int) -> float:
    """E max of n iid N(0, 1), Gumbel asymptotics."""
    a = np.sqrt(2 * np.log(n))
    return float(a - (np.log(np.log(n)) + np.log(4 * np.pi)) / (2 * a) + 0.5772 / a)


def logit_spread(x, key_shared: float = 0.0) -> float:
    """Within-row std of the logits: the part of q . k_s that is the same for every key s (the keys' part shared
    over the sequence, `key_shared` of their energy) shifts a whole row, which a softmax ignores (docs/theory.md
    §9)."""
    return float(np.sqrt(x.var * (1 - key_shared)))


def _stats(node, x, ctx):
    axis = node.attrs.get("axis", -1)
    n = dim(node.inputs[0], axis) or 1
    valid = None
    if x.valid_keys is not None and len(x.valid_keys) and int(np.max(x.valid_keys)) <= n:
        valid = tuple(int(v) for v in x.valid_keys[:4096])
    return n, softmax_statistics(round(logit_spread(x, _key_shared_share(node, ctx)), 3), n, valid)


_ROW_SHIFTS = frozenset({"pointwise", "add", "where", "causal_mask"})  # scales and masks between logits and softmax


def _key_shared_share(node, ctx) -> float:
    """The share of the keys' energy that all of a sequence's keys share (S_k / K_k), where the logits are a
    product q k^T reached through scales, masks and added biases; 0 elsewhere."""
    product = _logit_product(node.inputs[0], ctx, depth=8)
    if product is None:
        return 0.0
    keys = ctx.forward.get(product.inputs[1])
    return min(keys.shared / keys.K, 1.0) if keys is not None and keys.K > 0 else 0.0


def _logit_product(value, ctx, depth: int):
    """The product of two signals a softmax's logits come from, through ops that only shift or scale them (an
    added position bias is another signal: the product is the operand that reaches one)."""
    producer = value.producer if value is not None else None
    if producer is None or depth == 0:
        return None
    if producer.op == "matmul":
        return producer if sum(ctx.forward.get(v) is not None for v in producer.inputs if v is not None) == 2 else None
    if producer.op not in _ROW_SHIFTS | _VIEWS:
        return None
    for v in producer.inputs:
        if v is not None and ctx.forward.get(v) is not None and (found := _logit_product(v, ctx, depth - 1)):
            return found
    return None


@forward_rule("softmax")
def softmax_forward(node, ins, ctx):
    """Mean 1/N exactly; K = E sum p^2 / N."""
    x = ins[0]
    n, s = _stats(node, x, ctx)
    exact = x.exact and dim(node.inputs[0], node.attrs.get("axis", -1)) is not None
    return clean(1.0 / n, s["sum_p2"] / n, 1.0 / n**2, exact, simplex=True, gaussian=False, valid_keys=x.valid_keys)


@backward_rule("softmax")
def softmax_backward(node, ins, outs, grads, ctx):
    """g_s = p (g - p.g): G_s = G_p E[sum p^2 (1 - 2p + sum p^2)] / N, for the part of g that varies along the
    row: a part constant along it (p.g's own mean) is removed exactly (docs/theory.md §9)."""
    n, s = _stats(node, ins[0], ctx)
    factor, profile = _logit_rows(node, ins[0], ctx)
    if profile is not None:
        ctx.stated_axial[node] = [profile]
    return [grads[0] * (1 - _row_constant_share(node, ctx)) * s["backward"] / n * factor]


def _logit_rows(node, x, ctx) -> tuple[float, AxisProfile | None]:
    """Rows that see different numbers of keys (a causal mask), get different gradients (an attention output's
    gradient varies over its queries) or whose values co-vary unevenly (a causal attention before): in the diffuse
    regime the logit (t, s) gets G_t E|v_s - vbar_t|^2 / n_t^2, vbar_t the mean of the row's n_t values (docs/theory.md
    §15, §16). The factor on the scalar rule (which takes the rows and the values' deviations alike), and the
    logits' gradient profile along the queries, with the keys' (the rows that see a key, summed) across it."""
    shape = node.inputs[0].shape
    if shape is None or len(shape) < 2 or any(d is None for d in shape[-2:]):
        return 1.0, None
    if int(node.attrs.get("axis", -1)) % len(shape) != len(shape) - 1:
        return 1.0, None
    queries, keys = int(shape[-2]), int(shape[-1])
    rows = axis_profile.attention_rows(x.valid_keys, queries, keys)
    grad = ctx.backward_axial.get(node.outputs[0])
    if grad is not None and (grad.axis != len(shape) - 2 or len(grad.energy) != queries):
        return 1.0, None  # profiled along the keys: not followed
    given = grad.energy if grad is not None else np.ones(queries)
    flat = (1 - 1 / rows) / rows
    values = _weighted_values(node)
    share = _row_constant_share(node, ctx)
    deviation = _values_deviation(values, rows, keys, ctx) if values is not None else None
    if deviation is None:  # each key's deviation from its row's mean: (1 - S/K)(1 - 1/n_t), the rule's own; O(T)
        per_row = (1 - share) * flat * given
        per_key = np.zeros(keys)
        summed = axis_profile.key_sums(rows, per_row / rows)
        per_key[: len(summed)] = summed
    else:  # the values' whole matrix (at most MAX_KERNEL_LENGTH positions)
        per_cell = deviation / (rows**2)[:, None] * given[:, None]
        per_row, per_key = per_cell.sum(axis=1), per_cell.sum(axis=0)
    expected = (1 - share) * flat.mean()
    if expected <= 0 or per_row.mean() <= 0:
        return 1.0, None
    profile = profile_along(len(shape) - 2, per_row)
    across = per_key / per_key.mean()
    if profile is not None and not np.allclose(across, 1.0, rtol=0, atol=1e-3):
        profile = replace(profile, across=across)
    _state_logit_product(node, rows, given, per_row, ctx)
    return float(per_row.mean() / expected), profile


def _state_logit_product(node, rows: np.ndarray, given: np.ndarray, per_row: np.ndarray, ctx) -> None:
    """What the product q k^T behind these logits sends its queries and keys (docs/theory.md §16), each as a factor
    on its scalar rule and a profile, or None for the scalar rule."""
    product = _logit_product(node.inputs[0], ctx, depth=8)
    weighting = _weighting_product(node)
    if product is None or weighting is None:
        return
    if any(v.shape is None or len(v.shape) < 2 for v in (weighting.inputs[1], *product.inputs)):
        return
    queries = _query_rows(rows, given, per_row, weighting, product, ctx)
    if queries is None:
        queries = _rotated_queries(rows, given, product, ctx)
    keys = _key_columns(rows, weighting, product, ctx)
    if queries is not None or keys is not None:
        ctx.stated_logit_product[product] = (queries, keys)


def _key_columns(rows, weighting, product, ctx) -> tuple[float, AxisProfile | None] | None:
    """Key s sums the queries that see it, each weighted by its row of the logits' gradient; where the queries and
    their gradients co-vary (deep in a causal stack) those terms add coherently. None where no matrix is kept."""
    gradients = ctx.weights_gradient.get(weighting)
    values, queries = weighting.inputs[1], product.inputs[0]
    moments = [ctx.forward.get(v) for v in (values, queries)]
    if gradients is None or any(m is None or m.K <= 0 for m in moments):
        return None
    value_axis, query_axis = len(values.shape) - 2, len(queries.shape) - 2
    query_matrix = position_kernel.relative_matrix(
        _kernel_on(ctx, queries, query_axis),
        moments[1].shared / moments[1].K,
        _energy_along(moments[1], query_axis, len(rows)),
        len(rows),
    )
    if query_matrix is None:
        return None
    summed = position_kernel.key_gradients(
        rows, moments[0], _kernel_on(ctx, values, value_axis), value_axis, gradients, query_matrix
    )
    if summed is None or summed[1].mean() <= 0:
        return None
    keys_axis = len(product.inputs[1].shape) - 1
    return float(summed[0].mean() / summed[1].mean()), profile_along(keys_axis, summed[0])


def _query_rows(rows, given, per_row, weighting, product, ctx) -> tuple[float, AxisProfile | None] | None:
    """What query t's gradient, scale * (1/n_t) sum_s k_s (v_s - vbar_t)^T do_t, keeps (docs/theory.md §16): the
    keys' part common to the row cancels, tr(P A P B) over its keys in place of the values' deviations alone;
    and where keys and values are two linear maps of one source x, E[k_s (v_s - vbar_t)^T] = W_k C W_v^T does not
    average away over the row, adding (1 - S_x/K_x)(1 - S_v/K_v) tr(C^2)/tr(C)^2 per row. Past the kernel length,
    shared parts and otherwise independent tokens. None where the keys are rotated by position (RoPE: the keys'
    matrix would need the rotation): the scalar rule."""
    values, keys = weighting.inputs[1], product.inputs[1]
    key_map, value_map = _projection_of(keys), _projection_of(values)
    moments = [ctx.forward.get(v) for v in (values, keys)]
    if key_map is None or value_map is None or any(m is None or m.K <= 0 for m in moments):
        return None
    axes = (len(values.shape) - 2, len(keys.shape) - 1)
    overlaps = position_kernel.centred_overlaps(
        rows, moments[0], _kernel_on(ctx, values, axes[0]), moments[1], _kernel_on(ctx, keys, axes[1]), axes
    )
    if overlaps is None:  # no matrices kept (a long context): shared parts and independent tokens, O(T)
        overlaps = (1 - _share_of(moments[0])) * (1 - _share_of(moments[1])) * (rows - 1)
    if per_row.mean() <= 0:
        return None
    per_query = given * overlaps / rows**2
    source = key_map.inputs[0]
    x = ctx.forward.get(source) if source is value_map.inputs[0] else None
    if x is not None and x.K > 0:
        unshared = (1 - _share_of(x)) * (1 - _share_of(moments[0]))
        features = len(source.shape) - 1 if source.shape is not None else 0
        per_query = per_query + given * unshared * dispersion.input_overlap(
            x, key_map.params["weight"].fan_in, features
        )
    return float(per_query.mean() / per_row.mean()), profile_along(len(product.inputs[0].shape) - 2, per_query)


def _rotated_queries(rows, given, product, ctx) -> tuple[float, AxisProfile | None] | None:
    """Where RoPE rotates queries and keys: the scalar rule and the logits' row profile, with the gradient's
    relative energy along the queries' features (`across`). A softmax's backward removes what a row's keys have
    in common, and a rotation pair turning slowly along the row keeps the keys' shared part in common while a fast
    one scatters it: pair j of row t keeps (n_t - 1) - b (n_t rho_j(n_t) - 1) of the keys' energy, b the keys'
    shared fraction before the rotation and rho_j(n) = |mean_{s<n} e^{i theta_j s}|^2 from the tables. The
    rotated half reads the fast pairs, where sin^2 is large (docs/theory.md §16)."""
    queries, keys = product.inputs
    rotary = _rotary_of(keys)
    if rotary is None or _rotary_of(queries) is None or queries.shape is None:
        return None
    coherence = _pair_coherence(rotary[1:])
    unrotated = ctx.forward.get(rotary[0].outputs[0])
    features = queries.shape[-1]
    if coherence is None or unrotated is None or coherence.shape[1] != features or unrotated.K <= 0:
        return None
    n = np.minimum(rows.astype(np.int64), len(coherence))
    kept = (n - 1)[:, None] - _share_of(unrotated) * (n[:, None] * coherence[n - 1] - 1)
    weight = (given / rows**2)[:, None] * np.maximum(kept, 0.0)
    across = weight.sum(axis=0)
    if across.mean() <= 0:
        return None
    profile = profile_along(len(queries.shape) - 2, weight.sum(axis=1))
    if profile is None:
        profile = AxisProfile(len(queries.shape) - 2, np.ones(len(rows)))
    return 1.0, replace(profile, across=across / across.mean())


def _pair_coherence(tables) -> np.ndarray | None:
    """rho[n-1, j]: |mean over the first n positions of (cos, sin)|^2 of feature j, from the kept tables."""
    total = None
    for table in tables:
        a = axis_profile.position_table(table)
        if a is None:
            return None
        prefix = np.cumsum(a, axis=0) / np.arange(1, a.shape[0] + 1)[:, None]
        total = prefix**2 if total is None else total + prefix**2
    return total


def _share_of(x) -> float:
    return min(x.shared / x.K, 1.0) if x.K > 0 else 0.0


def _rotary_of(value, depth: int = 12):
    """(projection, cos table, sin table) where a value is x cos + rotate_half(x) sin of one projection x (RoPE),
    through views and head expansions; None elsewhere."""
    producer = value.producer if value is not None else None
    while producer is not None and producer.op in _TO_PROJECTION and depth > 0:
        signals = [v for v in producer.inputs if v is not None and v.const is None]
        if len(signals) != 1:
            return None
        producer, depth = signals[0].producer, depth - 1
    if producer is None or producer.op != "add":
        return None
    terms = [v.producer for v in producer.inputs if v is not None and v.producer is not None]
    if len(terms) != 2 or any(t.op != "mul" for t in terms):
        return None
    found = []
    for term in terms:
        signals = [v for v in term.inputs if v is not None and v.const is None]
        tables = [v for v in term.inputs if v is not None and v.const is not None]
        if len(signals) != 1 or len(tables) != 1:
            return None
        found.append((_projection_of_halves(signals[0]), tables[0]))
    if found[0][0] is None or found[0][0] is not found[1][0]:
        return None
    return found[0][0], found[0][1], found[1][1]


def _projection_of_halves(value):
    """The projection behind a value, or behind every part of a concatenation of its pieces (rotate_half)."""
    producer = value.producer if value is not None else None
    if producer is not None and producer.op == "concat":
        maps = {_projection_of(v) for v in producer.inputs if v is not None}
        return maps.pop() if len(maps) == 1 else None
    return _projection_of(value)


def _projection_of(value, depth: int = 12):
    """The linear map keys or values come from through views, picks, head expansions and per-feature biases or
    scales (an exporter's MatMul + Add); None where anything else lies between (RoPE's rotation, a norm)."""
    producer = value.producer if value is not None else None
    while producer is not None and depth > 0:
        if producer.op == "linear":
            return producer
        signals = [v for v in producer.inputs if v is not None and v.const is None]
        constants = [v for v in producer.inputs if v is not None and v.const is not None]
        per_feature = producer.op in ("add", "sub", "mul", "div") and all(_per_feature(c) for c in constants)
        if len(signals) != 1 or not (producer.op in _TO_PROJECTION or per_feature or _scales(producer)):
            return None
        producer, depth = signals[0].producer, depth - 1
    return None


_GRID = np.linspace(-3.0, 3.0, 13)


def _scales(node) -> bool:
    """A position-wise op that only scales (an exporter's share of 1/sqrt(d) on the keys)."""
    if node.op != "pointwise":
        return False
    values = pointwise.as_function(node.attrs["program"])(_GRID)
    return bool(np.allclose(values, values[-1] / _GRID[-1] * _GRID, rtol=1e-6, atol=1e-12))


def _per_feature(constant) -> bool:
    """A constant that is the same at every position (a bias, a scale): length 1 on all but its last axis."""
    shape = constant.shape or ()
    return all(d == 1 for d in shape[:-1])


def _kernel_on(ctx, value, axis: int):
    kernel = ctx.forward_kernel.get(value)
    return kernel if kernel is not None and kernel.axis == axis and len(kernel) == value.shape[axis] else None


def _energy_along(moments, axis: int, n: int) -> np.ndarray | None:
    profile = moments.axial
    return profile.energy if profile is not None and profile.axis == axis and len(profile.energy) == n else None


def _values_deviation(values, rows: np.ndarray, keys: int, ctx) -> np.ndarray | None:
    moments = ctx.forward.get(values)
    if moments is None or values.shape is None or len(values.shape) < 2 or values.shape[-2] != keys:
        return None
    axis = len(values.shape) - 2
    return position_kernel.row_deviations(rows, keys, moments, _kernel_on(ctx, values, axis), axis)


_VIEWS = frozenset({"dropout", "cast", "identity", "reshape", "squeeze", "unsqueeze"})
_TO_PROJECTION = frozenset({"transpose", "expand", "slice", "split", *_VIEWS})


def _row_constant_share(node, ctx) -> float:
    """The share of the gradient at attention weights p that is the same for every key of a row. Weights times
    values, o_t = sum_s p_ts v_s, send g_ts = do_t . v_s back: the values' part shared by a sequence's tokens
    (S_v) makes the same g for every key, and a softmax's backward cancels it. Other consumers: none."""
    values = _weighted_values(node)
    v = ctx.forward.get(values) if values is not None else None
    return _share_of(v) if v is not None else 0.0


def _weighted_values(node):
    """The values a softmax's weights multiply (through views), None where its output goes elsewhere."""
    product = _weighting_product(node)
    return product.inputs[1] if product is not None else None


def _weighting_product(node):
    """The product weights @ values a softmax's output feeds (through views), None where it goes elsewhere."""
    value = node.outputs[0]
    while len(value.consumers) == 1 and value.consumers[0].op in _VIEWS:
        value = value.consumers[0].outputs[0]
    users = value.consumers
    if len(users) != 1 or users[0].op != "matmul" or users[0].inputs[0] is not value:
        return None
    return users[0]


@forward_rule("log_softmax")
def log_softmax_forward(node, ins, ctx):
    """Diffuse regime: mean -ln N - sigma^2/2, K = (ln N + sigma^2/2)^2 + sigma^2."""
    x = ins[0]
    n, _ = _stats(node, x, ctx)
    s2 = x.var
    mean = -np.log(n) - s2 / 2
    return clean(mean, mean**2 + s2, mean**2, x.exact and s2 < np.log(max(n, 2)) / 4, gaussian=False)


@backward_rule("log_softmax")
def log_softmax_backward(node, ins, outs, grads, ctx):
    n, s = _stats(node, ins[0], ctx)
    return [grads[0] * max(1 - 2.0 / n + s["sum_p2"], 0.0)]
