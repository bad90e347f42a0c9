"""The symbolic pass: forward moments per value, then gradient second moments per value from a
unit-variance cotangent at every output (docs/theory.md §1-§11, rules in initcheck.rules)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from initcheck.analysis.finite_width import with_spread
from initcheck.codes import limit
from initcheck.errors import debugging
from initcheck.ir import Graph, Node, Value
from initcheck.moments import AxisProfile, Estimate, Moments, standard_input
from initcheck.passes import is_signal
from initcheck.rules import (
    APPROXIMATE,
    BACKWARD,
    FORWARD,
    Unsupported,
    activations,
    axis_profile,
    common,
    dispersion,
    entry_law,
    load_all,
    neighbours,
    position_kernel,
    rectified,
)
from initcheck.rules.position_kernel import PositionKernel

SOURCE_OPS = {"embedding"}  # ops that create signal from constants and indices
# backward rules exact only on average: a normalisation's per-sample 1/v (a Jensen factor, docs/theory.md §6) and
# its projection on the normalised input; a transposed conv's gradient averaged over its phases (§3)
_APPROXIMATE_BACKWARD = {"layer_norm", "rms_norm", "group_norm", "instance_norm", "batch_norm", "conv_transpose"}


@dataclass
class SymbolicResult:
    forward: dict[Value, Moments] = field(default_factory=dict)
    backward: dict[Value, float] = field(default_factory=dict)
    backward_exact: dict[Value, bool] = field(default_factory=dict)
    # the part of G shared by all positions (tokens, pixels) of a sample, as S is for K (docs/theory.md §9): what
    # a later average over positions (attention's values, a broadcast gate) adds up coherently
    backward_shared: dict[Value, float] = field(default_factory=dict)
    # where G varies along one axis (the class token a head reads, early tokens under a causal mask): its relative
    # profile there, as Moments.axial is for K (docs/theory.md §15)
    backward_axial: dict[Value, AxisProfile] = field(default_factory=dict)
    stated_axial: dict[Node, list] = field(default_factory=dict)  # gradient profiles a backward rule computed
    # where positions co-vary beyond S (after causal attention), the excess covariance along the sequence, forward
    # and backward (docs/theory.md §16); working state of the pass, emptied when it ends
    forward_kernel: dict[Value, PositionKernel] = field(default_factory=dict)
    backward_kernel: dict[Value, PositionKernel] = field(default_factory=dict)
    stated_kernel: dict[Node, list] = field(default_factory=dict)  # gradient kernels a backward rule computed
    stated_shared: dict[Node, dict[int, float]] = field(default_factory=dict)  # and shared gradients, by input
    # a softmax's backward, for the product q k^T its logits come from: (queries, keys), each (factor on the scalar
    # rule's G, gradient profile) or None for the scalar rule (docs/theory.md §16)
    stated_logit_product: dict[Node, tuple] = field(default_factory=dict)
    # attention weights times values: the relative second moments of its output's gradient between queries
    weights_gradient: dict[Node, np.ndarray | None] = field(default_factory=dict)
    # the part of a value's G that is 0 wherever the value is 0: what reaches it through a ReLU that meets an
    # already nonnegative input (autograd's ReLU' is 0 at 0) or a norm-ReLU of it, so the ReLU that made the value
    # takes nothing more away from that part
    positive_support: dict[Value, float] = field(default_factory=dict)
    # the part of G a per-channel norm's 1/v_c added to its input, which the layer that made that input takes
    # back out (its rows are what v_c is made of, docs/theory.md §17); emptied when the pass ends
    normalizer_excess: dict[Value, float] = field(default_factory=dict)
    # what a per-channel norm kept of its 1/v_c for the layer that made its input (E[1/R] E[R] of the rows'
    # Rayleigh quotients), and the part of a value's G that the dense layer behind it takes back for that: the
    # gradient that layer receives leans against the channel directions the kept factor came from, and its
    # cross terms between channels remove it (docs/theory.md §17); working state
    rayleigh_stays: dict[Value, float] = field(default_factory=dict)
    rayleigh_excess: dict[Value, float] = field(default_factory=dict)
    # the part of G that scales with the value's own squared deviation at each entry ((x - m)^2 / Var x): what a
    # conv's backward adds where the slopes behind it co-vary through the inputs they share (docs/theory.md §4);
    # the activation that made the value weighs it by its slope there; working state
    backward_weighted: dict[Value, float] = field(default_factory=dict)
    # the part of G shared by a sample's positions that an activation aligned with its input signal, which a batch
    # norm before it removes as its projection on the normalised signal (§6); working state
    backward_aligned: dict[Value, float] = field(default_factory=dict)
    # the share of a value's shared gradient (backward_shared) whose mean over the batch no train-mode batch norm
    # has yet removed: one at the outputs (independent cotangents), none behind such a norm, whose input gradient
    # has zero batch mean in every channel, which linear maps and activations keep (§6); working state
    backward_uncentred: dict[Value, float] = field(default_factory=dict)
    # the gradient's relative energy over a feature map, per spatial axis, where zero padding made it uneven (a
    # conv's border inputs receive fewer taps): the next conv back weighs its own border by it (§2); working state
    backward_map: dict[Value, tuple] = field(default_factory=dict)
    stated_map: dict[Node, list] = field(default_factory=dict)  # gradient maps a backward rule computed
    # how the gradient co-varies between neighbouring positions where an average pool made it (its window's
    # positions get one gradient): a max pool whose windows share a maximum sums theirs (§7); working state
    backward_neighbours: dict[Value, neighbours.GradientNeighbours] = field(default_factory=dict)
    # the gradient's relative energy over the atoms of a value's entry law (Moments.law), where later ReLUs make
    # it uneven there (a residual stream's entries that stay above 0 receive more, docs/theory.md §4); working state
    backward_law: dict[Value, np.ndarray] = field(default_factory=dict)
    batch: int = 1  # samples in the analysed batch (the inputs' leading dimension)
    status: dict[Node, str] = field(default_factory=dict)  # modeled | approximated | unsupported
    errors: dict[Node, str] = field(default_factory=dict)  # why a node is unsupported (its rule declined it)
    internal: dict[Node, str] = field(default_factory=dict)  # rules or translations that raised: initcheck's bugs

    def supported_share(self, value: Value) -> float:
        """The share of a value's G that is 0 wherever the value is 0 (`positive_support`)."""
        g = self.backward.get(value, 0.0)
        return min(self.positive_support.get(value, 0.0) / g, 1.0) if g > 0 else 0.0

    def estimate(self, value: Value) -> Estimate | None:
        """The prediction for one value, in the type the probe's measurements share."""
        fwd = self.forward.get(value)
        if fwd is None:
            return None
        spread = math.sqrt(fwd.spread) if fwd.spread > 0 else 0.0
        bar = math.hypot(spread, 0.0 if fwd.exact else limit("IC401", "approximation_bar"), fwd.bar)
        grad_exact = self.backward_exact.get(value, False)
        grad_bar = math.hypot(spread, 0.0 if grad_exact else limit("IC401", "gradient_bar"))
        return Estimate(fwd.m, fwd.K, self.backward.get(value), bar, fwd.exact, grad_exact, grad_bar)

    def estimates(self) -> dict[str, Estimate]:
        """Every predicted value by name, as the probe keys its measurements."""
        return {value.name: est for value in self.forward if (est := self.estimate(value)) is not None}


def _passthrough(node: Node, ins: list[Moments | None]) -> list[Moments]:
    first = next(m for m in ins if m is not None)
    return [first.approx().with_(profile=None, mean_profile=None, simplex=False, phases=None, axial=None)] * len(
        node.outputs
    )


def run_symbolic(graph: Graph, inputs: dict[str, Moments] | None = None) -> SymbolicResult:
    load_all()
    result = SymbolicResult(batch=_batch(graph))
    for value in graph.inputs:
        if is_signal(value):
            result.forward[value] = (inputs or {}).get(value.name, standard_input())
    for node in graph.nodes:
        _forward_node(node, result)
    for value in graph.outputs:
        if value in result.forward:
            result.backward[value] = 1.0
            result.backward_exact[value] = True
            # an independent cotangent per element: shared only where a sample has one position
            result.backward_shared[value] = 1.0 if positions(value, result.batch) == 1 else 0.0
    for node in reversed(graph.nodes):
        _backward_node(node, result)
        for value in node.outputs:  # every reader of its kernels is done (they come later in the order)
            result.forward_kernel.pop(value, None)
            result.backward_kernel.pop(value, None)
            result.backward_law.pop(value, None)  # read by its producer's backward, just done
            result.backward_neighbours.pop(value, None)
    result.forward_kernel.clear()
    result.backward_law.clear()
    result.backward_kernel.clear()
    result.normalizer_excess.clear()
    result.rayleigh_stays.clear()
    result.rayleigh_excess.clear()
    result.backward_map.clear()
    result.stated_map.clear()
    result.backward_neighbours.clear()
    result.backward_aligned.clear()
    result.backward_weighted.clear()
    result.backward_uncentred.clear()
    result.weights_gradient.clear()
    return result


def _forward_node(node: Node, result: SymbolicResult) -> None:
    ins = [result.forward.get(v) if v is not None else None for v in node.inputs]
    if all(m is None for m in ins) and node.op not in SOURCE_OPS:
        return
    rule = FORWARD.get(node.op)
    outs = None
    if node.attrs.get("internal_error"):  # the frontend's handler raised: carried here to be reported
        result.internal[node] = node.attrs["internal_error"]
    if rule is not None:
        try:
            outs = rule(node, ins, result)
        except OverflowError:  # Python floats raise where numpy gives inf: the moments overflow, which is a finding
            outs = [Moments(0.0, math.inf, math.inf, False) for _ in node.outputs]
        except Exception as e:  # a bug in a rule must not end the analysis, nor pass for an unsupported op
            if debugging():
                raise
            result.internal[node] = f"{type(e).__name__}: {e}"
            outs = None
        if isinstance(outs, Unsupported):
            result.errors[node] = outs.reason
            outs = None
    if outs is None:
        result.status[node] = "unsupported"
        if all(m is None for m in ins):
            return
        outs = _passthrough(node, ins)
    else:
        outs = outs if isinstance(outs, list) else [outs]
        approximate = node.op in APPROXIMATE or any(not o.exact for o in outs if o is not None)
        upstream_exact = all(m.exact for m in ins if m is not None)
        result.status[node] = (
            "approximated" if approximate and (upstream_exact or node.op in APPROXIMATE) else "modeled"
        )
    upstream_bar = max((m.bar for m in ins if m is not None), default=0.0)
    for value, moments in zip(node.outputs, outs):
        if moments is not None and (value.is_float or value.dtype == "unknown"):
            if moments.bar < upstream_bar:
                moments = moments.with_(bar=upstream_bar)
            if result.status[node] != "unsupported":
                # the channel means' pattern first: a conv's dispersion reads it
                pattern = _guarded(node, result, "mean pattern", dispersion.pattern, node, ins, value, moments)
                moments = moments.with_(pattern=pattern)
                moments = moments.with_(
                    axial=_guarded(node, result, "energy profile", axis_profile.forward, node, ins, value, moments),
                    rectified=_guarded(node, result, "rectified shape", rectified.forward, node, ins, value, moments),
                    law=_guarded(
                        node, result, "entry law", entry_law.forward, node, ins, value, moments, result.forward
                    ),
                    dispersion=_guarded(
                        node, result, "channel dispersion", dispersion.forward, node, ins, value, moments
                    ),
                    overlap=_guarded(
                        node, result, "channel overlap", dispersion.overlap, node, ins, value, moments, result.forward
                    ),
                    neighbours=_guarded(
                        node, result, "neighbour correlation", neighbours.forward, node, ins, value, moments
                    ),
                )
                moments = _position_kernel(node, ins, value, moments, result)
            result.forward[value] = _spread_or_unknown(node, ins, moments)


def _position_kernel(node: Node, ins, value: Value, moments: Moments, result: SymbolicResult) -> Moments:
    """The output's kernel (docs/theory.md §16); where it came from a whole second-moment matrix, the part all
    positions share is taken from there too (a per-token norm of tokens as uneven as a causal stack makes them)."""
    if value in result.forward_kernel:  # the rule made it (attention)
        return moments
    kernel = _guarded(
        node, result, "position kernel", position_kernel.forward, node, ins, value, moments, result.forward_kernel
    )
    if kernel is None:
        return moments
    result.forward_kernel[value] = kernel
    if kernel.share is None:
        return moments
    return moments.with_(S=min(max(kernel.share * moments.K, moments.M), moments.K))


def _guarded(node: Node, result: SymbolicResult, what: str, compute, *args):
    """A side statistic (a profile, a kernel, a shape): a bug in it is reported (IC302) and it is dropped, never
    the analysis."""
    try:
        return compute(*args)
    except Exception as e:
        if debugging():
            raise
        result.internal.setdefault(node, f"{type(e).__name__}: {e} ({what})")
        return None


def _spread_or_unknown(node: Node, ins: list[Moments | None], moments: Moments) -> Moments:
    try:
        return with_spread(node, ins, moments)
    except (ArithmeticError, ValueError):  # moments beyond float range: the signal checks report the overflow
        if debugging():
            raise
        return moments


def _backward_node(node: Node, result: SymbolicResult) -> None:
    grads = [result.backward.get(v) for v in node.outputs]
    if all(g is None for g in grads):
        return
    ins = [result.forward.get(v) if v is not None else None for v in node.inputs]
    if all(m is None for m in ins):
        return
    outs = [result.forward.get(v) for v in node.outputs]
    filled = [g if g is not None else 0.0 for g in grads]
    rule = BACKWARD.get(node.op)
    # exact only where this node's own statistics are (a norm's backward reads its input's K) and every
    # gradient it receives is
    exact = (
        result.status.get(node) == "modeled"
        and node.op not in _APPROXIMATE_BACKWARD
        and all(m.exact for m in ins if m is not None)
        and all(result.backward_exact.get(v, True) for v in node.outputs)
    )
    gins = None
    if rule is not None and result.status.get(node) != "unsupported":
        try:
            gins = rule(node, ins, outs, filled, result)
        except Exception as e:  # a bug: reported (IC302), the gradient passed through
            if debugging():
                raise
            result.internal.setdefault(node, f"{type(e).__name__}: {e} (backward)")
            gins = None
    if gins is None:
        exact = False
        total = sum(filled)
        gins = [None if m is None else total for m in ins]
    _carry_rayleigh_excess(node, gins, sum(filled), result)
    shared_out = sum(result.backward_shared.get(v, 0.0) for v in node.outputs)
    fraction = min(shared_out / sum(filled), 1.0) if sum(filled) > 0 else 0.0
    profiles = _gradient_profiles(node, ins, result) if rule is not None else [None] * len(node.inputs)
    kernels = _gradient_kernels(node, ins, fraction, result) if rule is not None else [None] * len(node.inputs)
    stated_shared = result.stated_shared.pop(node, {})
    maps = _gradient_maps(node, result) if rule is not None else [None] * len(node.inputs)
    near = _gradient_neighbours(node, ins, result) if rule is not None else [None] * len(node.inputs)
    laws = _gradient_laws(node, ins, outs, result) if rule is not None else [None] * len(node.inputs)
    for index, (value, g, moments) in enumerate(zip(node.inputs, gins, ins)):
        if value is None or g is None or moments is None:
            continue
        before = result.backward.get(value, 0.0)
        merged = common.merged_map_profile(before, result.backward_map.get(value), g, maps[index])
        if merged is None:
            result.backward_map.pop(value, None)
        else:
            result.backward_map[value] = merged
        _merge_neighbours(value, before, g, near[index], result)
        profile = axis_profile.combined(before, result.backward_axial.get(value), g, profiles[index])
        if profile is None:
            result.backward_axial.pop(value, None)
        else:
            result.backward_axial[value] = profile
        law = entry_law.combined(before, result.backward_law.get(value), g, laws[index])
        if law is None:
            result.backward_law.pop(value, None)
        else:
            result.backward_law[value] = law
        kernel = position_kernel.combined(before, result.backward_kernel.get(value), g, kernels[index])
        if kernel is None:
            result.backward_kernel.pop(value, None)
        else:
            result.backward_kernel[value] = kernel
        result.backward[value] = result.backward.get(value, 0.0) + g
        if g > 0:
            supported = g * _on_positive_entries(node, index, ins, result)
            result.positive_support[value] = result.positive_support.get(value, 0.0) + supported
        result.backward_exact[value] = result.backward_exact.get(value, True) and exact
        shared = stated_shared.get(index)
        stated_kernel = kernels[index]
        share = stated_kernel.share if stated_kernel is not None else None
        if shared is None and share is not None:  # from the whole second-moment matrix (§16)
            shared = min(max(share, 0.0), 1.0) * g
        if shared is None:
            shared = _shared_gradient(node, index, value, g, fraction, ins, result)
        _merge_uncentred(node, value, shared, result)
        result.backward_shared[value] = result.backward_shared.get(value, 0.0) + shared


# ops that keep which channels a gradient leans towards (each channel scaled or summed alone)
_CHANNELWISE = frozenset({"pointwise", "batch_norm", "dropout", "identity", "cast", "mul"})


def _carry_rayleigh_excess(node: Node, gins, total: float, result: SymbolicResult) -> None:
    """Pass the part of the output's G that a dense layer behind will take back on to the inputs, in proportion,
    through ops that treat each channel alone (a gate's broadcast operand, which sums its positions, gets none)."""
    excess = result.rayleigh_excess.pop(node.outputs[0], 0.0) if node.outputs else 0.0
    if excess <= 0 or total <= 0 or node.op not in _CHANNELWISE:
        return
    out_shape = node.outputs[0].shape
    for value, g in zip(node.inputs, gins):
        if value is not None and g and value.shape == out_shape:
            result.rayleigh_excess[value] = result.rayleigh_excess.get(value, 0.0) + excess * g / total


def _merge_uncentred(node: Node, value: Value, shared: float, result: SymbolicResult) -> None:
    """The uncentred share of `value`'s shared gradient after this node's part is added (weighted by parts)."""
    centring = node.op == "batch_norm" and node.attrs.get("training")
    share = 0.0 if centring else result.backward_uncentred.get(node.outputs[0], 1.0)
    before = result.backward_shared.get(value, 0.0)
    if 0 < before + shared < math.inf:  # with no shared gradient the share does not matter
        old = result.backward_uncentred.get(value, 1.0)
        result.backward_uncentred[value] = (before * old + shared * share) / (before + shared)


def _on_positive_entries(node: Node, index: int, ins, result: SymbolicResult) -> float:
    """The share of the gradient this node sends to input `index` that is 0 wherever that input is 0 (or, for an
    affine image of a ReLU's output, wherever that output was 0): all of it from a ReLU (slope 0 at 0) on a
    nonnegative input, or on a batch norm of a ReLU's output (its zeros land below 0: DenseNet's norm-ReLU); its
    output's share from a sum whose other terms are zero, and from a batch norm, copy or concatenation of
    rectified entries (where only some of them are, DenseNet's concatenation of a ReLU's output with convs', the
    claim is for those: they are the ones with zeros)."""
    x = ins[index]
    if node.op == "pointwise" and x is not None:
        lands = x.positive is not None or activations.zeros_land_below(x)
        return 1.0 if lands and activations.kills_zeros(node.attrs["program"]) else 0.0
    share = result.supported_share(node.outputs[0])
    if share == 0.0 or x is None:
        return 0.0
    if node.op in ("add", "identity", "cast", "dropout"):
        others = [m for i, m in enumerate(ins) if i != index and m is not None]
        return share if all(m.K == 0 for m in others) else 0.0
    if node.op in rectified.SAME_ENTRIES and index == 0 or node.op == "concat":
        return share if x.rectified is not None else 0.0
    return 0.0


def _gradient_profiles(node: Node, ins, result: SymbolicResult) -> list:
    """Each input's gradient profile from its outputs' (a split's parts combined by the gradient each sends back);
    the attention rule states its values' own."""
    stated = result.stated_axial.pop(node, None)
    if stated is not None:
        return stated

    def profiles(out):
        grad = result.backward_axial.get(out)
        return _guarded(node, result, "gradient profile", axis_profile.backward, node, ins, out, grad, result)

    return _over_outputs(node, result, profiles, axis_profile.combined)


def _over_outputs(node: Node, result: SymbolicResult, compute, combine) -> list:
    """Each input's statistic from every output that sends gradient back, the outputs' combined by that gradient."""
    combined: list = [None] * len(node.inputs)
    total = 0.0
    for out, weight in _output_weights(node, result):
        found = compute(out) or [None] * len(node.inputs)
        if total:
            found = [combine(total, a, weight, b) for a, b in zip(combined, found)]
        combined, total = found, total + weight
    return combined


def _output_weights(node: Node, result: SymbolicResult) -> list[tuple[Value, float]]:
    """The outputs whose gradient reaches the inputs, each with its share of it (G times size); one output: 1."""
    if len(node.outputs) == 1:
        return [(node.outputs[0], 1.0)]
    return [(out, result.backward[out] * (out.numel or 1)) for out in node.outputs if result.backward.get(out, 0.0) > 0]


def _gradient_maps(node: Node, result: SymbolicResult) -> list:
    """Each input's gradient profile over the spatial map, from the (first) output's."""
    if (stated := result.stated_map.pop(node, None)) is not None:
        return stated
    out = node.outputs[0]
    found = _guarded(node, result, "gradient map", common.gradient_map_profiles, node, result.backward_map.get(out))
    return found if found is not None else [None] * len(node.inputs)


def _gradient_neighbours(node: Node, ins, result: SymbolicResult) -> list:
    """Each input's gradient neighbours (how it co-varies between positions), from the output's."""
    out = result.backward_neighbours.get(node.outputs[0])
    found = _guarded(node, result, "gradient neighbours", neighbours.gradient_backward, node, ins, out)
    return found if found is not None else [None] * len(node.inputs)


def _merge_neighbours(value: Value, before: float, g: float, new, result: SymbolicResult) -> None:
    merged = neighbours.merged_gradient(before, result.backward_neighbours.get(value), g, new)
    if merged is None:
        result.backward_neighbours.pop(value, None)
    else:
        result.backward_neighbours[value] = merged


def _gradient_laws(node: Node, ins, outs, result: SymbolicResult) -> list:
    """Each input's gradient weights over its entry law, from the (first) output's."""
    grad_law = result.backward_law.get(node.outputs[0]) if node.outputs else None
    found = _guarded(node, result, "gradient law", entry_law.backward, node, ins, outs, grad_law)
    return found if found is not None else [None] * len(node.inputs)


def _gradient_kernels(node: Node, ins, shared_fraction: float, result: SymbolicResult) -> list:
    """Each input's gradient kernel from its outputs' (combined as the profiles are); the attention rule states its
    values' own."""
    stated = result.stated_kernel.pop(node, None)
    if stated is not None:
        return stated

    def kernels(out):
        grad, profile = result.backward_kernel.get(out), result.backward_axial.get(out)
        return _guarded(
            node,
            result,
            "gradient kernel",
            position_kernel.backward,
            node,
            ins,
            out,
            grad,
            shared_fraction,
            profile,
            result.forward_kernel,
        )

    return _over_outputs(node, result, kernels, position_kernel.combined)


def _batch(graph: Graph) -> int:
    leading = [v.shape[0] for v in graph.inputs if v.shape and len(v.shape) >= 2 and v.shape[0]]
    return int(min(leading)) if leading else 1


def positions(value: Value, batch: int = 1) -> int | None:
    """Positions per sample: tokens of (B, T, C), pixels of (B, C, H, W); for (N, C), N / B (one for (B, C),
    T for a (B T, C) that a layer flattened)."""
    shape = value.shape
    if shape is None or any(d is None for d in shape) or len(shape) < 2:
        return None
    if len(shape) == 2:
        rows = int(shape[0] or 0)
        return rows // batch if batch and rows % batch == 0 else None
    if len(shape) == 3:
        return int(shape[1] or 0)
    return int(math.prod(int(d or 0) for d in shape[2:]))


_POSITION_REDUCERS = {"global_avg_pool", "global_max_pool"}
_PICKS = {"gather", "slice", "split"}


def _shared_gradient(node: Node, index: int, value: Value, g: float, fraction: float, ins, result) -> float:
    """Gs of an input from its G: all of it where the input has one position per sample or the op averages over
    positions (its gradient is broadcast back); the attention values get the queries' mean gradient; elsewhere
    the output's shared fraction (position-wise ops map a gradient that is the same at every position alike)."""
    batch = result.batch
    if positions(value, batch) == 1 or node.op in _POSITION_REDUCERS:
        return g
    if node.op in _PICKS:
        # the gradient lands on the picked positions only, which the gradient's profile along the axis says
        # (§15); one picked position shares nothing with the others, several share in proportion
        picked, total = positions(node.outputs[0], batch), positions(value, batch)
        if picked and total and picked < total:
            return 0.0 if picked == 1 else g * fraction * picked / total
    a = ins[0]
    if node.op == "pointwise":
        return g * fraction * activations.shared_gradient_share(node, a, result)
    if node.op in axis_profile.PER_POSITION_NORMS and index == 0:
        pairs = axis_profile.norm_shared_ratio(node, a, result.backward_axial.get(node.outputs[0]))
        return min(g, g * fraction * pairs)
    if node.op == "matmul" and index == 1 and a is not None and a.simplex:
        return min(g, g * fraction + g * (1 - fraction) / max(positions(value, batch) or 1, 1))
    return g * fraction
