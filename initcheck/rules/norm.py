"""Normalisation layers (docs/theory.md §6)."""

from __future__ import annotations

from initcheck.moments import clean
from initcheck.rules import dispersion
from initcheck.rules.axis_profile import norm_ratio
from initcheck.rules.common import dim
from initcheck.rules.registry import backward_rule, forward_rule


def _affine(node) -> tuple[float, float, float]:
    """E[gamma^2], E[beta^2], mean(beta); missing scale = 1, missing bias = 0."""
    scale, bias = node.params.get("scale"), node.params.get("bias")
    g2 = scale.mean_sq if scale is not None else 1.0
    return g2, (bias.mean_sq if bias is not None else 0.0), (bias.mean if bias is not None else 0.0)


def _group_variance(x, channels: int) -> float:
    """Variance left after removing the mean over a group of `channels` channels: the per-channel
    offsets (M - m^2) are removed only in proportion 1/channels (InstanceNorm: all; LayerNorm: ~none)."""
    return max(x.K - x.m**2 - (x.M - x.m**2) / max(channels, 1), 0.0)


def _normalized(node, ins, v: float, channels: int, kept: float = 1.0):
    """`kept`: what eps keeps of the variance where the groups' variances scatter (`dispersion.kept_variance`)."""
    x = ins[0]
    eps = node.attrs.get("epsilon", 1e-5)
    g2, b2, b_mean = _affine(node)
    r = v / (v + eps) * kept
    keep = (1 - 1 / max(channels, 1)) / (v + eps)  # per-position: offsets shared by the group are removed
    leftover = max(x.M - x.m**2, 0.0) * keep
    S = g2 * max(x.S - x.m**2, 0.0) * keep + b2 if x.S is not None else None
    return clean(b_mean, g2 * r + b2, g2 * leftover + b2, x.exact, S=S, profile=x.profile, gaussian=x.gaussian)


def _backward(node, ins, grads, v: float, n: int | None):
    """G_x = E[gamma^2] G_y / (v + eps) * (N - 1 - 2r + r^2) / N * N/(N-3) (Jensen, per-sample v)."""
    eps = node.attrs.get("epsilon", 1e-5)
    g2, _, _ = _affine(node)
    r = v / (v + eps)
    n = n or 1000
    factor = (n - 1 - 2 * r + r * r) / n * (n / (n - 3) if n > 4 else 1.0)
    return [grads[0] * g2 / (v + eps) * factor] + [None] * (len(ins) - 1)


def _layer_size(node) -> int | None:
    shape = node.inputs[0].shape
    axis = node.attrs.get("axis", -1)
    if shape is None or any(d is None for d in shape[axis:]):
        return None
    size = 1
    for d in shape[axis:]:
        size *= d
    return size


@forward_rule("layer_norm")
def layer_norm_forward(node, ins, ctx):
    n = _layer_size(node) or 1
    return _normalized(node, ins, _group_variance(ins[0], n), n)


def _uneven(node, ins, ctx) -> float:
    """E_i[q_i / e_i] where energy or gradient varies along the positions a norm treats one by one (§15)."""
    return norm_ratio(node, ins[0], ctx.backward_axial.get(node.outputs[0]))[0]


def _per_channel(node, ins, ctx, gin: float, channels_per_group: int, v: float) -> float:
    """The input gradient of a norm that divides each channel (group) by its own variance: E_c[(v + eps) / (v_c +
    eps)] more where this instance's channels vary unevenly (§17). The layer that made the input reads the same
    rows: its backward keeps only the part its rows' energies did not make, E[1/R] E[R] for v_c = e_c R_c (the
    input's correlated or uneven channels, zero padding's offsets), times E_c[v_c / (v_c + eps)] / (v / (v + eps))
    where eps caps the quiet channels; the rest of the factor it takes back (`ctx.normalizer_excess`)."""
    eps = _relative_eps(node, v)
    factor = dispersion.jensen(ins[0], channels_per_group, eps=eps)
    value = node.inputs[0]
    unreturned = dispersion.unreturned_part(value, ins[0])
    kept = dispersion.kept_variance(ins[0], channels_per_group, unreturned, eps)
    rayleigh = dispersion.part_closure(unreturned, channels_per_group)
    stays = kept * rayleigh
    ctx.rayleigh_stays[value] = rayleigh
    if factor > stays:
        ctx.normalizer_excess[value] = ctx.normalizer_excess.get(value, 0.0) + gin * (factor - stays)
    return gin * factor


def _relative_eps(node, v: float) -> float:
    """The norm's eps over the variance it divides by: where a channel's variance is near eps (a depthwise conv's
    output in MobileNetV3, whose norms take eps 1e-3), eps caps what the quiet channels get."""
    eps = node.attrs.get("epsilon", 1e-5)
    return eps / v if v > 0 else 1e3


@backward_rule("layer_norm")
def layer_norm_backward(node, ins, outs, grads, ctx):
    n = _layer_size(node)
    gins = _backward(node, ins, grads, _group_variance(ins[0], n or 1), n)
    return [gins[0] * _uneven(node, ins, ctx)] + gins[1:]


@forward_rule("rms_norm")
def rms_norm_forward(node, ins, ctx):
    """K_y = E[gamma^2] K / (K + eps)."""
    x = ins[0]
    eps = node.attrs.get("epsilon", 1e-5)
    g2, b2, b_mean = _affine(node)
    return clean(
        b_mean,
        g2 * x.K / (x.K + eps) + b2,
        g2 * x.M / (x.K + eps) + b2,
        x.exact,
        S=g2 * x.S / (x.K + eps) + b2 if x.S is not None else None,
        profile=x.profile,
        gaussian=x.gaussian,
    )


@backward_rule("rms_norm")
def rms_norm_backward(node, ins, outs, grads, ctx):
    """G_x = E[gamma^2] G_y (n - 1) / n E[1 / ms], the mean square ms of each position's n features varying from
    sample to sample: E[1/ms] = r / ((r - 2) K) for Gaussian features that vary along r independent directions
    (n of them where the features are independent; §6)."""
    x = ins[0]
    n = _layer_size(node) or 1000
    g2, _, _ = _affine(node)
    r = dispersion.independent_features(x, node, n)
    per_sample = r / (r - 2)
    factor = g2 * (n - 1) / (n * (x.K + node.attrs.get("epsilon", 1e-5))) * per_sample * _uneven(node, ins, ctx)
    return [grads[0] * factor] + [None] * (len(ins) - 1)


def _channel_group(node) -> tuple[int, int | None]:
    """Channels normalised together and elements per (sample, group) for group/instance norm."""
    shape = node.inputs[0].shape
    groups = node.attrs.get("num_groups")
    channels = dim(node.inputs[0], 1) or 1
    per_group = channels // groups if groups else 1
    spatial: int | None = 1
    if shape is not None and len(shape) > 2 and all(d is not None for d in shape[2:]):
        for d in shape[2:]:
            spatial *= d
    else:
        spatial = None
    return per_group, (per_group * spatial if spatial else None)


@forward_rule("group_norm", "instance_norm")
def group_norm_forward(node, ins, ctx):
    per_group, _ = _channel_group(node)
    v = _group_variance(ins[0], per_group)
    kept = dispersion.kept_variance(ins[0], per_group, eps=_relative_eps(node, v))
    return _normalized(node, ins, v, per_group, kept)


@backward_rule("group_norm", "instance_norm")
def group_norm_backward(node, ins, outs, grads, ctx):
    per_group, n = _channel_group(node)
    kept = [max(grads[0] - _group_mean_energy(node, grads[0], per_group, ctx), 0.0)] + list(grads[1:])
    v = _group_variance(ins[0], per_group)
    gins = _backward(node, ins, kept, v, n)
    return [_per_channel(node, ins, ctx, gins[0] * _uneven(node, ins, ctx), per_group, v)] + gins[1:]


def _batch_size(node) -> int | None:
    shape = node.inputs[0].shape
    if shape is None or any(d is None for d in shape):
        return None
    channels = shape[1] if len(shape) > 1 else 1
    total = 1
    for d in shape:
        total *= d
    return total // max(channels, 1)


@forward_rule("batch_norm")
def batch_norm_forward(node, ins, ctx):
    """Training mode normalises each channel over batch and space (offsets removed, M_y = E[beta^2]);
    eval mode is the affine map y = a_c (x - mu_c) + beta_c with running statistics."""
    x = ins[0]
    if node.attrs.get("training"):
        v = max(x.K - x.M, 0.0)
        eps = node.attrs.get("epsilon", 1e-5)
        g2, b2, b_mean = _affine(node)
        profile = x.centred if x.centred is not None else x.profile  # the channel means are gone
        kept = v / (v + eps) * dispersion.kept_variance(x, eps=_relative_eps(node, v))
        return clean(b_mean, g2 * kept + b2, b2, x.exact, profile=profile, gaussian=x.gaussian)
    s = node.params["eval"]  # moments over channels of a = gamma/sqrt(var+eps), mu and beta
    m = x.m
    K = x.var * s["a2"] + m * m * s["a2"] - 2 * m * s["a2mu"] + s["a2mu2"] + 2 * m * s["ab"] - 2 * s["abmu"] + s["b2"]
    mean = m * s["a"] - s["amu"] + s["b"]
    M = K - x.var * s["a2"] + max(x.M - m * m, 0.0) * s["a2"]
    return clean(mean, K, M, x.exact, profile=x.profile, gaussian=x.gaussian)


@backward_rule("batch_norm")
def batch_norm_backward(node, ins, outs, grads, ctx):
    x = ins[0]
    if node.attrs.get("training"):
        kept = [max(grads[0] - _batch_mean_energy(node, grads[0], ctx), 0.0)] + list(grads[1:])
        v = max(x.K - x.M, 0.0)
        gins = _backward(node, ins, kept, v, _batch_size(node))
        return [_per_channel(node, ins, ctx, gins[0] * _uneven(node, ins, ctx), 1, v)] + gins[1:]
    return [grads[0] * node.params["eval"]["a2"]] + [None] * (len(ins) - 1)


def _batch_mean_energy(node, g: float, ctx) -> float:
    """What the norm's backward subtracts as the gradient's mean over the batch and positions of a channel, and as
    its projection on the normalised signal: the part of G every position of a sample shares (G_s) averages over
    N samples to G_s / N, and an activation after the norm aligns part of it with the signal (ctx.backward_aligned).
    Beside global pooling G_s is most of G, and at batch 8 this takes about a tenth away at the last norm; the
    norms before it see a gradient whose batch mean that one already removed (ctx.backward_uncentred, §6)."""
    return _sample_shared(node, g, ctx) * ctx.backward_uncentred.get(node.outputs[0], 1.0) / max(ctx.batch, 1)


def _group_mean_energy(node, g: float, per_group: int, ctx) -> float:
    """A group (instance) norm subtracts each sample's mean over its group's channels and positions: of the part of
    G a sample's positions share, 1/channels-per-group, with its projection on the signal (§6)."""
    return _sample_shared(node, g, ctx) / max(per_group, 1)


def _sample_shared(node, g: float, ctx) -> float:
    """The part of G a sample's positions share, with the part an activation after the norm aligned with the
    signal (what the norm's mean and projection subtract)."""
    out = node.outputs[0]
    return min(ctx.backward_shared.get(out, 0.0) + ctx.backward_aligned.get(out, 0.0), g)


def _lrn_scale(node, x) -> float:
    """1 / (bias + alpha/size * sum of `size` squares)^(2 beta), the sum taken at its mean size * K."""
    a = node.attrs
    return (a["bias"] + a["alpha"] * x.K) ** (-2 * a["beta"])


@forward_rule("lrn", approximate=True)
def lrn_forward(node, ins, ctx):
    """Local response normalisation with the window's sum of squares replaced by its mean."""
    x = ins[0]
    s = _lrn_scale(node, x)
    return clean(x.m * s**0.5, x.K * s, x.M * s, False, profile=x.profile, gaussian=x.gaussian)


@backward_rule("lrn")
def lrn_backward(node, ins, outs, grads, ctx):
    return [grads[0] * _lrn_scale(node, ins[0])]
