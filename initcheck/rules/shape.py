"""Ops that move, select or copy values without changing their statistics (docs/theory.md §8, §11)."""

from __future__ import annotations

import numpy as np

from initcheck.moments import clean
from initcheck.rules.axis_profile import picked_energy
from initcheck.rules.common import all_gradients, broadcast_factor, first_signal
from initcheck.rules.registry import backward_rule, forward_rule

# Pure re-arrangements keep m, K and M exactly; the padding profile survives only ops that keep the
# spatial layout.
REARRANGE = ("reshape", "flatten", "transpose", "squeeze", "unsqueeze", "depth_to_space", "space_to_depth")
SELECT = ("slice", "gather", "split")


@forward_rule(*REARRANGE, *SELECT)
def rearrange_forward(node, ins, ctx):
    """Copies keep m, K, M; a select or slice along an axis whose energy varies keeps its picks' (§15)."""
    i, x = first_signal(ins)
    out = x.with_(
        profile=None,
        mean_profile=None,
        phases=None,
        simplex=x.simplex and node.op in ("squeeze", "unsqueeze"),
        axial=None,
    )
    picked = picked_energy(node, x.axial, node.inputs[i]) if node.op in SELECT else 1.0
    if picked != 1.0:
        S = None if x.S is None else x.S * picked
        out = clean(x.m, x.K * picked, x.M * picked, x.exact, S=S, gaussian=x.gaussian, spread=x.spread, bar=x.bar)
    return [out] * len(node.outputs)


@forward_rule("identity", "cast")
def identity_forward(node, ins, ctx):
    return first_signal(ins)[1]


@forward_rule("causal_mask")
def causal_mask_forward(node, ins, ctx):
    """is_causal attention: query row i sees keys up to i (aligned at the end when S > T)."""
    x = ins[0]
    shape = node.inputs[0].shape
    if not shape or len(shape) < 2 or None in shape[-2:]:
        return x.approx()
    rows, keys = shape[-2], shape[-1]
    return x.with_(valid_keys=np.minimum(np.arange(1, rows + 1) + max(keys - rows, 0), keys))


@backward_rule(*REARRANGE, *SELECT, "identity", "cast", "where", "causal_mask")
def rearrange_backward(node, ins, outs, grads, ctx):
    """Every output element is a copy of one input element: G_x = sum_o G_o numel_o / numel_x
    (unselected elements of a slice get no gradient; a reshape keeps G)."""
    i, _ = first_signal(ins)
    n_in = node.inputs[i].numel
    sizes = [v.numel for v in node.outputs]
    if n_in and all(sizes):
        g = sum(gr * n for gr, n in zip(grads, sizes) if gr is not None) / n_in
    else:
        g = sum(x for x in grads if x is not None) / max(sum(1 for x in grads if x is not None), 1)
    return all_gradients(ins, g)


@forward_rule("expand", "tile")
def expand_forward(node, ins, ctx):
    return first_signal(ins)[1].with_(profile=None, mean_profile=None)


@backward_rule("expand", "tile")
def expand_backward(node, ins, outs, grads, ctx):
    i, _ = first_signal(ins)
    return [grads[0] * broadcast_factor(node.inputs[i], node.outputs[0]) if j == i else None for j in range(len(ins))]


@forward_rule("where")
def where_forward(node, ins, ctx):
    """Masking (e.g. causal attention): the signal branch passes; masked entries are counted so the
    softmax that follows knows how many keys each row really has."""
    i, x = first_signal(ins)
    if i > 0 and sum(m is not None for m in ins[1:]) > 1:  # a choice between two signals by a mask not known
        return x.approx()  # here: the first is passed, and said to be an approximation
    cond = node.inputs[0].array if node.inputs[0] is not None else None
    if cond is None or cond.ndim < 2 or i == 0:
        return x
    keep = cond if i == 1 else ~cond.astype(bool)
    rows = keep.astype(bool).reshape(-1, cond.shape[-1]).sum(axis=1)
    return x.with_(valid_keys=rows) if rows.min() < cond.shape[-1] else x


@forward_rule("dropout")
def dropout_forward(node, ins, ctx):
    """Inverted dropout in training mode: K/(1-p), m and M unchanged; eval mode: identity."""
    x = ins[0]
    p = node.attrs.get("ratio", 0.5) if node.attrs.get("training") else 0.0
    positive = None if x.positive is None else x.positive * (1 - p)  # dropped entries are zeros
    return x.with_(K=x.K / (1 - p), positive=positive)


@backward_rule("dropout")
def dropout_backward(node, ins, outs, grads, ctx):
    p = node.attrs.get("ratio", 0.5) if node.attrs.get("training") else 0.0
    return [grads[0] / (1 - p)] + [None] * (len(ins) - 1)


@forward_rule("pad")
def pad_forward(node, ins, ctx):
    """Constant padding with c: K = (n_in K + n_pad c^2) / n_out; reflect/edge keep K (docs/theory.md §11)."""
    x = ins[0]
    n_in, n_out = node.inputs[0].numel, node.outputs[0].numel
    if node.attrs.get("mode", "constant") != "constant" or not n_in or not n_out:
        return x.with_(profile=None, mean_profile=None)
    c = node.attrs.get("value", 0.0)
    frac = n_in / n_out
    return clean(
        frac * x.m + (1 - frac) * c,
        frac * x.K + (1 - frac) * c * c,
        frac * x.M + (1 - frac) * c * c,
        x.exact,
        S=frac * x.S + (1 - frac) * c * c if x.S is not None else None,
        gaussian=False,
    )


@backward_rule("pad")
def pad_backward(node, ins, outs, grads, ctx):
    return all_gradients(ins, grads[0])
