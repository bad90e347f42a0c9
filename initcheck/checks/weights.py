"""Broken weights: NaN/Inf anywhere (IC201), constant weight matrices (IC202), normalisations whose scale is zero
(a zero-initialised residual branch is deliberate; a zero scale on the main path silences the network)."""

from __future__ import annotations

from initcheck.analysis.layers import output_heads
from initcheck.checks import repairs
from initcheck.checks.registry import CheckContext, check
from initcheck.ir import Graph, Node, Value
from initcheck.passes import WEIGHTLESS, is_signal
from initcheck.report.model import Finding
from initcheck.rules.common import NORMALIZATIONS

_MATRIX_OPS = {"linear", "conv", "conv_transpose", "embedding", "rnn", "lstm", "gru"}
_MASK_OPS = {"where", "add", "sub", "min", "max"}


def _reinit(node: Node, value: Value, targets: dict[str, float]):
    """A broken weight drawn afresh at its layer's target std (g/sqrt(fan_in), from the table); a broken bias set
    to 0. Which it is, the frontend's names say (the stored tensor the value is), not its position."""
    weight = node.attrs.get("weight_tensor")
    if value.name == weight and weight in targets:
        return repairs.change([repairs.redraw(node, targets[weight])])
    if value.name == node.attrs.get("bias_tensor"):
        return repairs.change([repairs.filled(node, "bias_tensor", 0.0)])
    return repairs.unfixable("no target std is known for this tensor: re-initialise it in the model's source")


def _tensor_findings(graph: Graph, targets: dict[str, float]) -> list[Finding]:
    heads = output_heads(graph)
    findings = []
    for node in graph.nodes:
        for index, value in enumerate(node.inputs):
            if value is None or value.const is None or not value.is_weight:
                continue
            stats = value.const
            # -inf is a legitimate fill value of attention masks; NaN never is
            bad = stats.nan_count + (stats.inf_count if node.op not in _MASK_OPS else 0)
            if bad:
                findings.append(
                    Finding(
                        "IC201",
                        "error",
                        "weights",
                        f"'{value.name}' has {stats.nan_count} NaN and {stats.inf_count} Inf of {stats.numel} entries",
                        node.name,
                        node.scope,
                        float(bad),
                        0.0,
                        "re-initialise this tensor",
                        repair=_reinit(node, value, targets),
                    )
                )
            elif (
                node.op in _MATRIX_OPS
                and index == (0 if node.op == "embedding" else 1)
                and stats.is_constant
                and stats.numel > 1
            ):
                zero = stats.mean_sq == 0
                if zero and _ends_residual_branch(node):  # the branch's last layer zero: the block starts as identity
                    findings.append(
                        Finding(
                            "IC202",
                            "info",
                            "weights",
                            f"'{value.name}' is zero at the end of a residual branch: the "
                            "block starts as the identity (a deliberate init, or a zero-initialised norm folded into it)",
                            node.name,
                            node.scope,
                            0.0,
                            None,
                            "nothing to do",
                        )
                    )
                    continue
                if zero and node in heads:  # ViT, MLP-Mixer: the classifier starts at zero on purpose
                    findings.append(
                        Finding(
                            "IC202",
                            "info",
                            "weights",
                            f"'{value.name}': the output layer is zero-initialised, so the "
                            "model starts with uniform predictions; it learns from the first step (its gradient does not "
                            "depend on its weights), and the body receives gradient from the second step on",
                            node.name,
                            node.scope,
                            0.0,
                            None,
                            "nothing to do: a deliberate init (ViT, MLP-Mixer heads)",
                        )
                    )
                    continue
                findings.append(
                    Finding(
                        "IC202",
                        "warning" if zero else "error",
                        "weights",
                        f"every entry of '{value.name}' equals {stats.mean:.4g}: "
                        + ("no signal passes this layer" if zero else "all units compute the same function"),
                        node.name,
                        node.scope,
                        stats.mean,
                        None,
                        "use a random init with std g/sqrt(fan_in)"
                        + ("; ignore if this zero-init is deliberate" if zero else ""),
                        repair=_reinit(node, value, targets),
                    )
                )
    return findings


_PASSIVE = WEIGHTLESS | {"mul", "div"}  # a layer-scale multiply sits between a branch's last layer and the add


def zero_scale_findings(graph: Graph, at_branch_end: bool) -> list[Finding]:
    """A normalisation with scale 0 outputs its bias for every input. At the end of a residual branch that is the
    well-known zero-init of the last norm (torchvision's zero_init_residual, timm's zero_init_last): the block starts
    as the identity (IC202 info, with the weights). Anywhere else nothing passes it: IC102 error, with the signal."""
    findings = []
    for node in graph.nodes:
        scale = node.params.get("scale")
        if node.op not in NORMALIZATIONS or scale is None or scale.mean_sq != 0:
            continue
        if _ends_residual_branch(node) != at_branch_end:
            continue
        if at_branch_end:
            findings.append(
                Finding(
                    "IC202",
                    "info",
                    "weights",
                    f"'{node.label}' has scale 0 at the end of a residual branch: the block "
                    "starts as the identity (zero_init_residual / zero_init_last), a deliberate init",
                    node.name,
                    node.scope,
                    0.0,
                    None,
                    "nothing to do",
                )
            )
        else:
            findings.append(
                Finding(
                    "IC102",
                    "error",
                    "forward",
                    f"'{node.label}' has scale (gamma) 0 on the main path: its output is its "
                    "bias for every input, so nothing after it carries signal and nothing before it gets gradient",
                    node.name,
                    node.scope,
                    float("-inf"),
                    None,
                    "initialise the scale to 1 (zero only the last "
                    "normalisation of residual branches, if that is what was meant)",
                    repair=repairs.change([repairs.filled(node, "scale_tensor", 1.0)]),
                )
            )
    return findings


def _ends_residual_branch(node: Node) -> bool:
    """The node's output reaches a sum of two signals through weightless single-consumer ops only, and another
    input of that sum carries signal: zeroing this branch leaves the block as its other path. (When every input
    of the sum is zeroed, as a ResNet's residual and its downsampling shortcut both at gamma 0, nothing passes.)"""
    found = _residual_sum(node)
    if found is None:
        return False
    add, mine = found
    return any(is_signal(v) and v is not mine and not _zeroed(v) for v in add.inputs)


def _residual_sum(node: Node) -> tuple[Node, Value] | None:
    """(the sum the node's output reaches through passive single-consumer ops, the input it arrives as)."""
    value = node.outputs[0]
    for _ in range(8):
        if len(value.consumers) != 1:
            return None
        consumer = value.consumers[0]
        if consumer.op in ("add", "sum") and sum(is_signal(v) for v in consumer.inputs) >= 2:
            return consumer, value
        if consumer.op not in _PASSIVE:
            return None
        value = consumer.outputs[0]
    return None


def _zeroed(value: Value) -> bool:
    """The value comes, through passive single-input ops, from a normalisation whose scale is 0."""
    for _ in range(8):
        producer = value.producer
        if producer is None:
            return False
        scale = producer.params.get("scale")
        if producer.op in NORMALIZATIONS and scale is not None:
            return scale.mean_sq == 0
        signals = [v for v in producer.inputs if is_signal(v)]
        if producer.op not in _PASSIVE or len(signals) != 1:
            return False
        value = signals[0]
    return False


@check("weights", "IC201", "IC202")
def _weights_check(ctx: CheckContext) -> list[Finding]:
    targets = {r.weight_tensor: r.target_std for r in ctx.rows if r.weight_tensor and r.target_std}
    return _tensor_findings(ctx.graph, targets) + zero_scale_findings(ctx.graph, at_branch_end=True)
