"""Entries whose distribution a sum made neither Gaussian nor rectified (docs/theory.md §4, "Residual streams").

A post-activation ResNet adds a ReLU's output to a Gaussian branch and takes a ReLU of the sum:
x' = relu(x + y). Each channel of the stream is a reflected random walk, skewed and with a point mass at 0,
whatever the width: a Gaussian closure of x + y (same mean and variance) puts too much of it above 0, which
over eight blocks left the stream's variance 0.74x the measurement and the next batch norm's gradient 1.3x.
The law carries the walk's distribution instead: a mixture of Gaussians in units of the entries' standard
deviation. An add of shaped entries and independent Gaussians widens every component; an activation maps it
to atoms again (a bounded number of them, equal in probability); copies and per-channel affine maps keep it.

Backward, the gradient is not even over the law: the entries that stay above 0 receive the gradient of every
later block through the identity path. The pass carries its relative energy per atom (SymbolicResult.
backward_law); an activation sends each input component what its atoms receive times its slope there, and its
own factor on G weighs E[phi'^2] by it.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from initcheck import gaussian, pointwise
from initcheck.moments import EntryLaw, Moments
from initcheck.pointwise import never_negative, rounded
from initcheck.rules.common import activation_behind
from initcheck.rules.rectified import SAME_ENTRIES, channel_parts

ATOMS = 128  # atoms of equal probability an activation's output law keeps: K within 1e-3 of the uncompressed law


def forward(node, ins, out_value, out, values: dict | None = None) -> EntryLaw | None:
    """The output's law, from its inputs' and its op (`values`: the pass's moments so far, for a norm that reads
    a concatenation's parts)."""
    x = ins[0] if ins else None
    if node.op == "pointwise" and x is not None and x.law is not None:
        return mapped(node.attrs["program"], rounded(x.m), rounded(x.var), x.law).law
    if node.op == "max_pool" and x is not None:
        return _maximum(int(np.prod(node.attrs["kernel"])), x)
    if node.op == "batch_norm" and node.attrs.get("training") and values is not None:
        parts = _standardized_parts(node.inputs[0], values)
        if parts is not None:
            return parts
    if node.op in SAME_ENTRIES:
        return x.law if x is not None else None
    if node.op == "add":
        return _summed(node, ins)
    if node.op in ("conv", "linear") and values is not None:
        return _few_inputs(node, values)
    return None


GAUSSIAN_ENOUGH = 0.05  # rows' concentration (3 / (n + 2) for n Gaussian inputs) below which a sum is Gaussian enough


def _few_inputs(node, values: dict) -> EntryLaw | None:
    """A sum of few entries of a shaped law keeps part of its shape: a depthwise 3x3 conv of SiLU outputs leaves
    each channel skewed (third cumulant sum_t w_t^3 / |w|^3 of the input's) and heavy-tailed (fourth: the rows'
    concentration times the input's), so the activation after its norm sees more energy in the tails than a
    Gaussian's (K +3.5%, E[phi'^2] -2%; docs/theory.md §4). The output's law is the mixture over the layer's own
    rows (a sample of them) of the normalised sums, where an activation reads them through
    per-channel affine ops and the entries are an activation's of Gaussian inputs."""
    w = node.params.get("weight")
    if w is None or w.sample_rows is None or w.row_concentration < GAUSSIAN_ENOUGH:
        return None
    if activation_behind(node.outputs[0]) is None:
        return None
    producer = node.inputs[0].producer if node.inputs[0] is not None else None
    if producer is None or producer.op != "pointwise":
        return None
    source = values.get(producer.inputs[0])
    if source is None or source.law is not None or source.units or source.var <= 0:
        return None  # (a few units' activations are each their own law: `Moments.units`)
    if source.rectified is not None and not source.gaussian:
        return None
    # the standardized law moves slowly with the input's scale: two digits of it are one law
    m, var = float(f"{source.m:.2g}"), float(f"{source.var:.2g}")
    return _summed_activations(producer.attrs["program"], m, var, w.sample_rows, _kept_lean(w.sample_rows, w.row_skew))


def _kept_lean(rows: tuple[tuple[float, ...], ...], layer_skew: float) -> float:
    """The weight of the sampled rows against their mirrors that gives their mixture the whole layer's mean skew
    (1 where the sample is the layer; a half, the mirrored law, where the sample does not lean)."""
    sample = float(np.mean(np.sum(np.asarray(rows) ** 3, axis=1)))
    if abs(sample) < 1e-9:
        return 0.5
    return round(min(max((1 + layer_skew / sample) / 2, 0.0), 1.0), 2)


def _activation_points(program, m: float, var: float) -> tuple[np.ndarray, np.ndarray] | None:
    """phi(z), z ~ N(m, var), standardized, as points and probabilities on a fine grid."""
    grid, density = gaussian.fine_grid()
    with np.errstate(all="ignore"):
        out, weights = gaussian.defined(pointwise.as_function(program)(m + math.sqrt(var) * grid), density)
    mean = float(weights @ out)
    sd = math.sqrt(max(float(weights @ (out - mean) ** 2), 0.0))
    return ((out - mean) / sd, weights) if sd > 0 else None


_DRAWS = 1 << 18  # sums drawn in all, spread over the rows
_QUANTILES = 4096


@lru_cache(maxsize=256)
def _summed_activations(
    program, m: float, var: float, rows: tuple[tuple[float, ...], ...], lean: float = 1.0
) -> EntryLaw | None:
    """The law over the channels of sum_j w_j phi(z_j), z_j ~ N(m, var) independent, for the layer's sampled rows
    w (unit length), drawn from a fixed sample (the same numbers on every run). The rows' own concentration sets
    the tails (uniform rows, PyTorch's default, have lighter ones than Gaussian rows); their mean skew, an
    instance's draw, the law's lean: MobileNetV3-small's first depthwise conv's 16 rows average -0.18, so the ReLU
    after its norm keeps 0.458 of the variance, not 0.5 (docs/theory.md §4). The rows weigh `lean` against their
    mirrors' 1 - lean: the whole layer's lean where the rows are a sample of it."""
    points = _activation_points(program, m, var)
    if points is None:
        return None
    values, weights = points
    order = np.argsort(values, kind="stable")
    cdf = np.cumsum(weights[order]) / weights.sum()
    # the entries' law as equal-probability quantiles, drawn by index
    quantiles = np.interp((np.arange(_QUANTILES) + 0.5) / _QUANTILES, cdf, values[order])
    rng = np.random.default_rng(0)
    w = np.asarray(rows, dtype=float)
    per_row = max(_DRAWS // len(w), 1)
    picks = rng.integers(0, _QUANTILES, (len(w), per_row, w.shape[1]), dtype=np.int16)
    sums = np.einsum("rdn,rn->rd", quantiles.astype(np.float32)[picks], w.astype(np.float32)).astype(float).ravel()
    weights = np.full(sums.size, lean / sums.size)
    if lean < 1:  # a mirrored row's sums are the row's negated (the entries' law is the same for every row)
        sums, weights = (
            np.concatenate([sums, -sums]),
            np.concatenate([weights, np.full(sums.size, (1 - lean) / sums.size)]),
        )
    # finer than an activation's output law: a slope's jump (a hard-swish's at +-3) lands within an atom's stretch
    # of the tail, whose mean stands for all of it (E[phi'^2] 1.2% low at n = 9 with 128 atoms)
    return _standardized(sums, weights, atoms=4 * ATOMS)


def shape_of(x: Moments) -> EntryLaw | None:
    """The law of entries that carry a shape: their own, or the rectified Gaussian's `rectified` names."""
    if x.law is not None:
        return x.law
    if x.rectified is not None and not x.gaussian:
        share, offset = x.rectified
        return _rectified_law(round(share, 3), round(offset, 3))
    return None


def _points_of(x: Moments) -> tuple[np.ndarray, np.ndarray] | None:
    """The entries' standardized law as points and probabilities: a Gaussian's or a rectified Gaussian's on a fine
    grid, or the law's own atoms; None where the shape is unknown."""
    if x.law is not None:
        z, w, _ = _points(0.0, 1.0, x.law, ())
        return z, w
    if x.rectified is None and not x.gaussian:
        return None
    grid, density = gaussian.fine_grid()  # fine where a law is made from a Gaussian: the tail a max keeps
    if x.rectified is None or x.gaussian:
        return grid, density
    share, offset = x.rectified
    rectified = _activation_points(pointwise.unary("relu"), offset, 1.0)
    if rectified is None:
        return None
    return np.concatenate([rectified[0], grid]), np.concatenate([share * rectified[1], (1 - share) * density])


def _maximum(area: int, x: Moments) -> EntryLaw | None:
    """A max pool's output: the largest of `area` independent entries, P(max <= v) = F(v)^area (docs/theory.md
    §4). After a ReLU, the max of a 3x3 window is skewed: a batch norm and ReLU of it keep 0.553 of the variance,
    a Gaussian's 0.5 (DenseNet's first block)."""
    points = _points_of(x)
    if points is None or area <= 1:
        return None
    values, weights = points
    order = np.argsort(values, kind="stable")
    values, weights = values[order], weights[order] / weights.sum()
    below = np.minimum(np.cumsum(weights), 1.0)
    probability = below**area - np.concatenate([[0.0], below[:-1]]) ** area
    return _standardized(values, np.maximum(probability, 0.0))


def _standardized_parts(value, values: dict) -> EntryLaw | None:
    """A train-mode batch norm of a channel concatenation standardizes each channel within its part: its output's
    law is the parts' standardized laws mixed by their channels (a DenseNet's max-pooled stem beside its layers'
    Gaussian features). None where no part has a law of its own: rectified parts beside Gaussian ones are the
    rectified shape's (`rectified`), which also follows each part's share of the gradient."""
    parts = channel_parts(value.producer if value is not None else None, values)
    if parts is None:
        return None
    points, weights, shaped = [], [], False
    for _, channels, x in parts:
        drawn = _points_of(x)
        if drawn is None:
            return None
        shaped = shaped or x.law is not None
        points.append(drawn[0])
        weights.append(channels * drawn[1] / drawn[1].sum())
    return _standardized(np.concatenate(points), np.concatenate(weights)) if shaped else None


def _summed(node, ins) -> EntryLaw | None:
    """Shaped entries plus independent Gaussian signals: each component widens by the Gaussians' share of the
    variance. Only where every input is a signal (a constant's per-channel values would add channel offsets) and
    one alone has a shape."""
    if len(ins) != len(node.inputs) or any(x is None for x in ins):
        return None
    shaped = [(x, law) for x in ins if (law := shape_of(x)) is not None]
    if not shaped:
        return None
    # where several parts carry a shape, the most skewed one's is kept and the others' sums of many entries
    # (a conv's law of few) count as Gaussian beside it: a ResNet's stream beside its branch
    x, law = max(shaped, key=lambda part: abs(float(part[1].weights @ part[1].centers ** 3)))
    if any(not other.gaussian for other in ins if other is not x):
        return None
    total = sum(v.var for v in ins)
    if x.var <= 0 or total <= 0:
        return None
    kept = math.sqrt(x.var / total)  # the shaped part's share of the standard deviation
    width = math.sqrt(max(kept**2 * law.width**2 + 1 - kept**2, 0.0))
    return EntryLaw(law.centers * kept, law.weights, width)


class Mapped(NamedTuple):
    """An activation's statistics over a law, and its output's law."""

    mean: float
    K: float
    slope_sq: float  # E[phi'^2]
    slope: float  # E[phi']: how a small shift of the input moves the output's mean
    positive: float | None  # P(phi > 0) where phi is never negative
    law: EntryLaw | None  # with its inflow from the input law's components


@lru_cache(maxsize=256)
def mapped(program, m: float, var: float, law: EntryLaw) -> Mapped:
    """phi(z), z = m + sd u with u of the given law."""
    fn, kinks, sd = pointwise.as_function(program), pointwise.kinks(program), math.sqrt(max(var, 0.0))
    z, w, component = _points(m, sd, law, kinks)
    with np.errstate(all="ignore"):
        values, vw = gaussian.defined(fn(z), w)
        slopes, sw = gaussian.defined(gaussian.derivative(fn, z), w)
    positive = float(vw @ (values > 0)) if never_negative(program) else None
    out = _standardized(values, vw, slopes**2, component, len(law.weights))
    return Mapped(float(vw @ values), float(vw @ values**2), float(sw @ slopes**2), float(sw @ slopes), positive, out)


def _points(m: float, sd: float, law: EntryLaw, kinks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points, weights and the law's component of each for E f(z): its atoms, or each component's quadrature
    (split at the function's kinks, where a ReLU cuts through a component)."""
    if law.width <= 0 or sd <= 0:
        return m + sd * law.centers, law.weights, np.arange(len(law.weights))
    points, weights, components = [], [], []
    for k, (center, p) in enumerate(zip(law.centers, law.weights)):
        z, w = gaussian.nodes(m + sd * center, sd * law.width, kinks)
        points.append(z)
        weights.append(p * w)
        components.append(np.full(len(z), k))
    return np.concatenate(points), np.concatenate(weights), np.concatenate(components)


def _standardized(
    values: np.ndarray,
    weights: np.ndarray,
    slopes_sq: np.ndarray | None = None,
    components: np.ndarray | None = None,
    n_components: int = 1,
    atoms: int = ATOMS,
) -> EntryLaw | None:
    """The law of values (mean 0, variance 1), as at most `atoms` atoms of equal probability (each the mean of its
    stretch of the sorted values); with their slopes, the inflow from each source component into each atom."""
    total = weights.sum()
    if total <= 0:
        return None
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order] / total
    bins = np.minimum(((np.cumsum(w) - w / 2) * atoms).astype(int), atoms - 1) if len(v) > atoms else np.arange(len(v))
    size = int(bins[-1]) + 1
    mass = np.bincount(bins, w, size)
    kept = mass > 0
    v, w = np.bincount(bins, w * v, size)[kept] / mass[kept], mass[kept]
    mean = float(w @ v)
    sd = math.sqrt(max(float(w @ (v - mean) ** 2), 0.0))
    if sd <= 0 or not math.isfinite(sd):
        return None
    inflow = None
    if slopes_sq is not None:
        source = np.zeros(len(order), dtype=int) if components is None else components[order]
        atom = np.cumsum(kept)[bins] - 1
        flow = np.zeros((n_components, len(w)))
        np.add.at(flow, (source, atom), weights[order] / total * slopes_sq[order])
        inflow = flow
    return EntryLaw((v - mean) / sd, w, inflow=inflow)


@lru_cache(maxsize=64)
def _rectified_law(share: float, offset: float) -> EntryLaw | None:
    """relu(offset + g) standardized, for that share of the entries; the rest Gaussian. Wholly rectified, its
    inflow is from the one Gaussian it was made of."""
    g, w = gaussian.nodes(0.0, 1.0, [-offset])
    rectified = _standardized(np.maximum(offset + g, 0.0), w, (offset + g > 0).astype(float))
    if rectified is None or share >= 1:
        return rectified
    gauss = _standardized(g, w)
    if gauss is None:
        return None
    return _standardized(
        np.concatenate([rectified.centers, gauss.centers]),
        np.concatenate([share * rectified.weights, (1 - share) * gauss.weights]),
    )


def slope_weighting(out: Moments, grad_law: np.ndarray | None) -> float:
    """The factor on an activation's E[phi'^2] where its output's gradient is uneven over the output's law: the
    atoms a later ReLU keeps (a walk that stays above 0) are the ones that receive the gradient (docs/theory.md
    §4). One where the gradient is even or the law unknown."""
    law = shape_of(out)
    if grad_law is None or law is None or law.inflow is None or law.inflow.shape[1] != len(grad_law):
        return 1.0
    passed = law.inflow.sum()
    return float(law.inflow.sum(axis=0) @ grad_law / passed) if passed > 0 else 1.0


def backward(node, ins, outs, grad_law: np.ndarray | None) -> list[np.ndarray | None]:
    """Each input's gradient per component of its law, relative to its mean under the law; None where even."""
    none: list[np.ndarray | None] = [None] * len(node.inputs)
    out = outs[0] if outs else None
    if out is None:
        return none
    if node.op == "pointwise" and ins and ins[0] is not None and ins[0].law is not None:
        # an even gradient too comes back uneven: components below a ReLU's kink receive none
        law = shape_of(out)
        if law is None or law.inflow is None or law.inflow.shape[0] != len(ins[0].law.weights):
            return none
        flow = law.inflow.sum(axis=1) if grad_law is None else law.inflow @ grad_law
        return [_relative(flow, ins[0].law.weights)]
    if grad_law is None:
        return none
    if node.op in SAME_ENTRIES:
        keeps = ins and ins[0] is not None and shape_of(ins[0]) is not None
        return [grad_law if keeps else None] + none[1:]
    if node.op == "add" and out.law is not None:
        return [grad_law if x is not None and shape_of(x) is not None else None for x in ins]
    return none


def _relative(energy: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
    """Energy per component over its probability, with mean 1 under the law."""
    per = np.divide(energy, weights, out=np.zeros_like(energy), where=weights > 0)
    mean = float(weights @ per)
    return per / mean if mean > 0 else None


def combined(G1: float, h1: np.ndarray | None, G2: float, h2: np.ndarray | None) -> np.ndarray | None:
    """A gradient's weights over the law summed from two consumers (G-weighted); None where both are even."""
    if h1 is None and h2 is None:
        return None
    ref = h1 if h1 is not None else h2
    assert ref is not None
    size = len(ref)
    if (h1 is not None and len(h1) != size) or (h2 is not None and len(h2) != size):
        return None
    total = G1 + G2
    if total <= 0:
        return h2 if h2 is not None else h1
    first = h1 if h1 is not None else np.ones(size)
    second = h2 if h2 is not None else np.ones(size)
    return (G1 * first + G2 * second) / total
