"""ONNX ModelProto -> graph IR."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from initcheck.errors import ModelLoadError
from initcheck.frontends.onnx_load import (
    ExternalTensor,
    external_tensors,
    fold_node,
    infer_shapes,
    read_model,
    resolve_input_shapes,
    topological_order,
)
from initcheck.frontends.onnx_ops import HANDLERS, OpContext, attributes, fake_quant_range
from initcheck.ir import NORMALIZATIONS, WEIGHTED, Graph, Node, Value
from initcheck.limits import check_shape
from initcheck.stats import TABLE_READERS, affine_stats, keeps_values, tensor_stats

_SUBGRAPH_OPS = {"If", "Loop", "Scan"}


def node_inputs(node) -> list[str]:
    """Explicit inputs plus outer-scope values read inside If/Loop/Scan subgraphs."""
    names = list(node.input)
    if node.op_type not in _SUBGRAPH_OPS:
        return names
    for attr in node.attribute:
        for graph in list(attr.g.node and [attr.g] or []) + list(attr.graphs):
            local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
            for inner in graph.node:
                for name in node_inputs(inner):
                    if name and name not in local and name not in names:
                        names.append(name)
                local.update(inner.output)
    return names


def load_onnx(
    path: Path, input_shapes: dict[str, tuple[int, ...]], training: bool = False, stream: bool = False
) -> Graph:
    """The file's graph in the IR. With `stream`, weights in external data files are mapped one at a time as the
    analysis reaches them, never all held (peak memory: about the largest weight, not the model)."""
    model = read_model(path, stream=stream)
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    fixed = resolve_input_shapes(model, input_shapes)
    for name, shape in fixed.items():
        check_shape(f"{path}: input '{name}'", shape)
    arrays = _initial_constants(model, path)
    notes = _assume_full_masks(graph, fixed, arrays)
    nodes = topological_order(graph)
    shapes = _checked(infer_shapes(model, fixed, {}), path)
    folded = _fold(nodes, arrays, opset, shapes)
    if folded:
        shapes = _checked(infer_shapes(model, fixed, {k: arrays[k] for k in folded}) or shapes, path)
    signal = _signal_values(graph, nodes, arrays)
    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    ctx = OpContext(arrays, shapes, signal, opset, training, _absorbed_biases(nodes, arrays, signal), consumers)
    ctx.fake_quant = {
        n.output[0]: consumers[n.output[0]][0].output[0]
        for n in nodes
        if n.op_type == "QuantizeLinear" and n.output and n.output[0] in signal and fake_quant_range(n, ctx)
    }
    notes += _integer_ops_note(nodes, signal)
    tables = {name for node in nodes if node.op_type.lower() in TABLE_READERS for name in node.input}
    values = _make_values(graph, arrays, shapes, signal, fixed, tables)
    stored = _stored_tensors(graph, nodes)
    for tensor in graph.initializer:
        values[tensor.name].is_weight = True
    ir_nodes = []
    absorbed_adds = set(ctx.absorbed)
    producers = {name: n for n in nodes for name in n.output if name}
    # forms the exporters write for one op, by the output of their last piece
    composites: dict[str, _Guard | _GroupNorm] = {
        **_guards(nodes, producers, ctx),
        **_group_norms(nodes, producers, ctx),
    }
    inside_composites = {name for form in composites.values() for name in form.inner}
    for node in nodes:
        if not any(name in signal for name in node_inputs(node)) and node.op_type != "Gather":
            continue
        if node.op_type == "Gather" and node.output[0] not in signal:
            continue
        if node.op_type == "Add" and node.output[0] in absorbed_adds:
            continue
        if node.op_type == "DequantizeLinear" and node.input[0] in ctx.fake_quant:
            continue  # one clip node with its QuantizeLinear
        if not any(name in signal for name in node.output):  # masks, shapes, indices computed from the signal
            continue
        if node.output[0] in inside_composites:
            continue
        if node.output[0] in composites:
            ir_nodes.append(composites[node.output[0]].node(values, ctx))
            continue
        ir_nodes.append(_translate(node, ctx, values, absorbed_adds, stored))
    for name in graph.output:
        if name.name in values:
            values[name.name].is_output = True
    bn_folded = folded_batch_norm(model)
    if bn_folded:
        notes.append(
            "batch norms appear folded into the convolutions (an eval-mode export): the scale they would "
            "reset in training is not in this file, so findings that follow from it are information; to "
            "check the model as it will train, export with training=torch.onnx.TrainingMode.TRAINING or "
            "analyse the .pt2 or the live module"
        )
    ir = Graph(
        folded_normalization=bn_folded,
        nodes=ir_nodes,
        inputs=[values[n] for n in fixed],
        outputs=[values[o.name] for o in graph.output if o.name in values],
        values=values,
        source=str(path),
        producer_name=f"{model.producer_name} {model.producer_version}".strip(),
        opset=opset,
        notes=notes,
    )
    ir.rewire()
    return ir


def folded_batch_norm(model) -> bool:
    """The fingerprints the torch exporters leave when they fold eval-mode batch norms into convolutions: the
    dynamo exporter's rewrite rule on the conv node, or the legacy exporter's fresh `onnx::Conv_N` weights in a
    graph without any BatchNormalization."""
    nodes = list(model.graph.node)
    if any(n.op_type == "BatchNormalization" for n in nodes):
        return False
    for n in nodes:
        if n.op_type != "Conv":
            continue
        if any(p.key == "pkg.onnxscript.rewriter.rule_name" and "FuseBatchNorm" in p.value for p in n.metadata_props):
            return True
        if len(n.input) > 1 and n.input[1].startswith("onnx::Conv_") and "pytorch" in model.producer_name.lower():
            return True
    return False


def _assume_full_masks(graph, fixed: dict, arrays: dict) -> list[str]:
    """Integer/bool inputs named like masks are taken as all ones (every token valid), so the causal
    structure built from them folds into constants that the softmax rule can count."""
    from onnx import helper

    notes = []
    for inp in graph.input:
        if inp.name in arrays or "mask" not in inp.name.lower() or inp.name not in fixed:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        if dtype.kind in "iub":
            arrays[inp.name] = np.ones(fixed[inp.name], dtype=dtype)
            notes.append(f"input '{inp.name}' is taken as all ones (no padding)")
    return notes


def _checked(shapes: dict, path: Path) -> dict:
    """Inferred shapes, refused before anything of a size beyond the limit is folded or analysed."""
    for name, (shape, _) in shapes.items():
        check_shape(f"{path}: tensor '{name}'", shape)
    return shapes


class _Constants(dict):
    """Constants by name. A weight left in its external data file is mapped from it each time it is asked for and
    never kept here, so the frontend holds one weight at a time."""

    def __getitem__(self, name):
        found = super().__getitem__(name)
        return found.read() if isinstance(found, ExternalTensor) else found

    def get(self, name, default=None):
        return self[name] if name in self else default


def _initial_constants(model, path: Path) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    arrays = _Constants((t.name, where) for t, where in external_tensors(model, path))
    for tensor in model.graph.initializer:
        if tensor.name in arrays:
            continue
        if any(d < 0 for d in tensor.dims):
            raise ModelLoadError(f"{path}: weight '{tensor.name}' has a negative dimension {list(tensor.dims)}")
        check_shape(f"{path}: weight '{tensor.name}'", tensor.dims)
        try:
            arrays[tensor.name] = numpy_helper.to_array(tensor)
        except Exception as e:  # truncated or inconsistent tensor data
            raise ModelLoadError(f"{path}: weight '{tensor.name}' cannot be decoded ({type(e).__name__})") from None
    return arrays


def _partial_shapes(nodes, shapes: dict) -> dict[str, tuple]:
    """Shape(x) where some of x's dims are unknown (a batch the file leaves open): kept so that a Gather of its
    known dims still folds (the legacy exporter computes chunk() bounds from Shape(x)[-1])."""
    out = {}
    for node in nodes:
        if node.op_type == "Shape" and len(node.input) == 1 and node.output and not node.attribute:
            shape = shapes.get(node.input[0], (None,))[0]
            if shape is not None and any(d is None for d in shape):
                out[node.output[0]] = tuple(shape)
    return out


def _known_dims(node, partial: dict[str, tuple], arrays: dict) -> list[np.ndarray] | None:
    """Gather(Shape(x), indices) where every gathered dim of x is known."""
    if node.op_type != "Gather" or len(node.input) != 2 or node.input[0] not in partial:
        return None
    if any(a.name == "axis" and a.i != 0 for a in node.attribute):
        return None
    shape, indices = partial[node.input[0]], arrays.get(node.input[1])
    if indices is None or indices.dtype.kind not in "iu":
        return None
    picked = [shape[int(i)] if -len(shape) <= int(i) < len(shape) else None for i in indices.reshape(-1)]
    if any(d is None for d in picked):
        return None
    return [np.array(picked, dtype=np.int64).reshape(indices.shape)]


def _fold(nodes, arrays: dict, opset: int, shapes: dict) -> set[str]:
    folded: set[str] = set()
    partial = _partial_shapes(nodes, shapes)
    for node in nodes:
        if node.op_type == "Constant":
            from onnx.reference import ReferenceEvaluator

            try:
                evaluated: Any = ReferenceEvaluator(node).run(None, {})  # a list of the outputs
                arrays[node.output[0]] = np.asarray(evaluated[0])
                folded.add(node.output[0])
            except Exception:  # an unusual Constant form: treat as unknown
                pass
            continue
        outs = fold_node(node, arrays, opset, shapes)
        if outs is None:
            outs = _known_dims(node, partial, arrays)
        if outs is None:
            continue
        for name, arr in zip(node.output, outs):
            if name:
                arrays[name] = arr
                folded.add(name)
    return folded


_INTEGER_OPS = {
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "QLinearAdd",
    "QLinearMul",
    "QGemm",
    "DynamicQuantizeLinear",
    "DynamicQuantizeMatMul",
}


def _integer_ops_note(nodes, signal: set[str]) -> list[str]:
    """Integer-arithmetic quantized ops are outside the symbolic pass: say so plainly, once."""
    found = sorted({n.op_type for n in nodes if n.op_type in _INTEGER_OPS and any(i in signal for i in n.input)})
    if not found:
        return []
    return [
        f"integer-quantized graph ({', '.join(found)}): integer arithmetic is not modeled, so the analysis stops "
        "where the signal becomes integers; check the float (or QDQ fake-quantized) model before quantization"
    ]


def _signal_values(graph, nodes, arrays) -> set[str]:
    """Float values that depend on a float input, or on an embedding lookup of token ids."""
    from onnx import helper

    signal = set()
    for inp in graph.input:
        if inp.name in arrays:
            continue
        elem = inp.type.tensor_type.elem_type
        try:
            kind = helper.tensor_dtype_to_np_dtype(elem).kind
        except (KeyError, ValueError, TypeError):
            raise ModelLoadError(f"input '{inp.name}' has an unknown element type {elem}") from None
        if kind == "f":
            signal.add(inp.name)
    for node in nodes:
        if all(o in arrays for o in node.output if o):
            continue
        embedding = (
            node.op_type == "Gather"
            and node.input[0] in arrays
            and arrays[node.input[0]].dtype.kind == "f"
            and node.input[1] not in arrays
        )
        if embedding or any(name in signal for name in node_inputs(node) if name):
            for name in node.output:
                if name and not _is_index_output(node, name):
                    signal.add(name)
    return signal


def _is_index_output(node, name: str) -> bool:
    """Outputs that are shapes, masks or indices rather than signal."""
    if node.op_type in (
        "Shape",
        "Size",
        "Equal",
        "Less",
        "Greater",
        "LessOrEqual",
        "GreaterOrEqual",
        "Not",
        "And",
        "Or",
        "IsNaN",
        "IsInf",
        "ArgMax",
        "ArgMin",
        "NonZero",
        "TopK",
    ) and (node.op_type != "TopK" or name != node.output[0]):
        return True
    return node.op_type in ("MaxPool",) and name != node.output[0]


@dataclass(frozen=True)
class _Guard:
    """A Where that only guards a value, read as that value. Both torch exporters write
    scaled_dot_product_attention's softmax as Where(IsNaN(p), 0, p), to zero the rows a mask leaves empty: on
    finite values it is p, and read so the softmax's weights reach the values they multiply as in the live module's
    graph. The dynamo exporter writes softplus as Where(a > 20, a, Softplus(a)), which differ there by less than
    e^-20: taken as a choice between two signals, the where passed `a` itself (Mamba's step sizes K 21.7 where
    softplus gives 0.003, and exp(-dt A) overflowed)."""

    source: Any  # the Where node (onnx.NodeProto)
    guarded: str
    inner: frozenset[str] = frozenset()

    def node(self, values: dict[str, Value], ctx) -> Node:
        return Node(
            name=self.source.name or f"Where_{self.source.output[0]}",
            op="identity",
            source_op="Where (a guard)",
            inputs=[values[self.guarded]],
            outputs=[values[self.source.output[0]]],
            scope=scope_of(self.source),
        )


def _guards(nodes, producers: dict, ctx) -> dict[str, _Guard]:
    found = {}
    for n in nodes:
        if n.op_type != "Where" or len(n.input) != 3 or not n.output or not n.input[2]:
            continue
        test, chosen, other = producers.get(n.input[0]), n.input[1], n.input[2]
        if test is None:
            continue
        nan_guard = test.op_type == "IsNaN" and test.input[:1] == [other]
        softplus = (
            test.op_type == "Greater"
            and len(test.input) == 2
            and test.input[0] == chosen
            and _at_least(ctx.array(test.input[1]), 10.0)
            and _softplus_of(producers.get(other), chosen)
        )
        if nan_guard or softplus:
            found[n.output[0]] = _Guard(n, other)
    return found


def _softplus_of(node, name: str) -> bool:
    return node is not None and node.op_type == "Softplus" and node.input[:1] == [name]


def _at_least(a: np.ndarray | None, bound: float) -> bool:
    return a is not None and a.size == 1 and float(a.reshape(())) >= bound


@dataclass(frozen=True)
class _GroupNorm:
    """GroupNorm as both torch exporters write it: Reshape(x, [N, G, -1]) -> InstanceNormalization (scale 1, bias
    0) -> Reshape back to x's shape -> Mul(gamma) -> Add(beta), gamma and beta one per channel. As pieces the
    pass would normalise G rows of merged channels and positions, and lose what a channel's positions share (an
    attention block after it averages that part over the map: its output's K 10x low on the zoo's UNet)."""

    source: Any  # the InstanceNormalization node (onnx.NodeProto)
    x: str
    groups: int
    gamma: str
    beta: str
    inner: frozenset[str]  # outputs of the pieces the one node replaces, all but the last
    last: str  # the output of the last piece: the norm's

    def node(self, values: dict[str, Value], ctx) -> Node:
        def per_channel(name: str):
            return np.asarray(ctx.array(name)).reshape(-1) if name else None

        return Node(
            name=self.source.name or f"GroupNorm_{self.last}",
            op="group_norm",
            source_op="Reshape+InstanceNormalization+Reshape"
            + ("+Mul" if self.gamma else "")
            + ("+Add" if self.beta else ""),
            inputs=[values[self.x]],
            outputs=[values[self.last]],
            attrs={"num_groups": self.groups, "epsilon": float(attributes(self.source).get("epsilon", 1e-5))},
            params=affine_stats(per_channel(self.gamma), per_channel(self.beta)),
            scope=scope_of(self.source),
        )


def _group_norms(nodes, producers: dict, ctx) -> dict[str, _GroupNorm]:
    """Each exported GroupNorm, keyed by the output of its last piece."""
    found = {}
    for norm in nodes:
        if norm.op_type != "InstanceNormalization" or len(norm.input) < 3 or not norm.output:
            continue
        split = producers.get(norm.input[0])
        if split is None or split.op_type != "Reshape" or len(split.input) != 2:
            continue
        if len(ctx.consumers.get(norm.input[0], [])) != 1:
            continue
        if not (_plain(ctx.array(norm.input[1]), 1.0) and _plain(ctx.array(norm.input[2]), 0.0)):
            continue
        target, x = ctx.array(split.input[1]), split.input[0]
        x_shape = ctx.shape(x)
        if target is None or target.size != 3 or x_shape is None or len(x_shape) < 3:
            continue
        groups, channels = int(target.reshape(-1)[1]), x_shape[1]
        merge = _only_reader(ctx, norm.output[0], "Reshape")
        if not isinstance(channels, int) or groups <= 0 or channels % groups or merge is None:
            continue
        if ctx.shape(merge.output[0]) != x_shape:
            continue
        inner, last, gamma, beta = [split.output[0], norm.output[0]], merge.output[0], "", ""
        scale = _only_reader(ctx, last, "Mul")
        if scale is not None and (gamma := _channel_constant(scale, last, ctx, channels)):
            inner.append(last)
            last = scale.output[0]
            shift = _only_reader(ctx, last, "Add")
            if shift is not None and (beta := _channel_constant(shift, last, ctx, channels)):
                inner.append(last)
                last = shift.output[0]
        found[last] = _GroupNorm(norm, x, groups, gamma, beta, frozenset(inner), last)
    return found


def _plain(a: np.ndarray | None, value: float) -> bool:
    return a is not None and a.size > 0 and bool(np.all(a == value))


def _only_reader(ctx, name: str, op_type: str):
    readers = ctx.consumers.get(name, [])
    return readers[0] if len(readers) == 1 and readers[0].op_type == op_type and readers[0].output else None


def _channel_constant(node, signal: str, ctx, channels: int) -> str:
    """The constant operand of a Mul/Add on `signal` that holds one number per channel (shape (C, 1, ..., 1)); ""
    where it has none."""
    other = next((name for name in node.input if name != signal), "")
    a = ctx.array(other) if other else None
    if a is None or a.size != channels or a.ndim < 1 or a.shape[0] != channels:
        return ""
    return other


def _absorbed_biases(nodes, arrays, signal) -> dict[str, str]:
    """MatMul(x, W) followed by Add(., b) with a 1-D constant b: the Add becomes the Linear's bias."""
    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    absorbed = {}
    for node in nodes:
        if node.op_type != "MatMul" or node.input[1] not in arrays or node.input[0] not in signal:
            continue
        w = arrays[node.input[1]]
        users = consumers.get(node.output[0], [])
        if w.ndim != 2 or len(users) != 1 or users[0].op_type != "Add":
            continue
        add = users[0]
        other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        bias = arrays.get(other)
        if bias is not None and bias.size == w.shape[1] and bias.ndim <= 2:
            absorbed[node.output[0]] = other
            absorbed[add.output[0]] = node.output[0]
    return absorbed


def _make_values(graph, arrays, shapes, signal, fixed, tables=frozenset()) -> dict[str, Value]:
    from onnx import helper

    values: dict[str, Value] = {}

    def dtype_of(name, elem=None):
        if name in arrays:
            return str(arrays[name].dtype)
        if elem is None and name in shapes:
            elem = shapes[name][1]
        try:
            return str(helper.tensor_dtype_to_np_dtype(elem)) if elem else ("float32" if name in signal else "unknown")
        except Exception:  # an element type numpy does not know (e.g. float8)
            return "unknown"

    names = set(arrays) | set(signal) | set(shapes) | set(fixed)
    for node in graph.node:
        names.update(n for n in list(node.input) + list(node.output) if n)
    for name in names:
        arr = arrays.get(name)
        shape = tuple(arr.shape) if arr is not None else (fixed.get(name) or (shapes.get(name) or (None,))[0])
        values[name] = Value(
            name=name,
            shape=tuple(shape) if shape is not None else None,
            dtype=dtype_of(name),
            const=tensor_stats(arr) if arr is not None and arr.dtype.kind in "fiub" else None,
            array=arr if arr is not None and keeps_values(arr, name in tables) else None,  # weights: statistics only
            is_input=name in fixed,
        )
    return values


def scope_of(node) -> str:
    """Module path from the torch exporters: dynamo's name-scope metadata, else the legacy node name
    ('/layer1/layer1.0/conv1/Conv' -> 'layer1.0.conv1')."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
                if isinstance(scopes, list) and len(scopes) >= 2:
                    return str(scopes[-2])
            except (ValueError, SyntaxError):
                pass
    if node.name.startswith("/"):
        segments: list[str] = []
        for part in node.name.strip("/").split("/")[:-1]:
            if segments and part.startswith(segments[-1] + "."):  # Sequential children: 'expand' then 'expand.0'
                segments[-1] = part
            else:
                segments.append(part)
        return ".".join(segments)
    return ""


# ops whose output is their first input's entries rearranged (or cast): scaling one scales the other
_VIEWS = {"Transpose", "Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze", "Flatten"}


def _stored_tensors(graph, nodes) -> dict[str, str]:
    """Value name -> the initializer it is, or a view of (a transposed weight is its initializer for a fix)."""
    stored = {t.name: t.name for t in graph.initializer}
    for node in nodes:
        if node.op_type in _VIEWS and node.input and node.input[0] in stored:
            for out in node.output:
                stored[out] = stored[node.input[0]]
    return stored


def _fixable_tensors(node, op: str, values: dict[str, Value], stored: dict[str, str], bias: str | None) -> dict:
    """The initializers a fix would change: a weighted node's weight (2-D and more) and bias (1-D, or the Add a
    MatMul absorbed), a normalisation's scale (its second input in every ONNX norm); none where several fit."""
    found: dict[str, Any] = {}
    if op in WEIGHTED:
        ranks = [(stored[n], len(values[n].shape or ())) for n in node.input if n in stored]
        weights = {name for name, rank in ranks if rank >= 2}
        biases = {name for name, rank in ranks if rank == 1} | ({stored[bias]} if bias in stored else set())
        if len(weights) == 1:
            found["weight_tensor"] = weights.pop()
        if len(biases) == 1:
            found["bias_tensor"] = biases.pop()
    elif op in NORMALIZATIONS and len(node.input) > 1 and node.input[1] in stored:
        found["scale_tensor"] = stored[node.input[1]]
    elif op in ("rnn", "lstm", "gru") and len(node.input) > 2 and node.input[2] in stored:
        found["hidden_tensors"] = [stored[node.input[2]]]  # R: every direction's W_hh along its first axis
    return found


def _translate(node, ctx: OpContext, values: dict[str, Value], absorbed_adds: set[str], stored: dict[str, str]) -> Node:
    handler = HANDLERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    try:
        result = handler(node, ctx) if handler else None
    except (TypeError, ValueError, KeyError, IndexError, ZeroDivisionError, AttributeError) as e:
        # a node whose attributes or weights contradict the op's definition: a corrupt file, said in one line
        raise ModelLoadError(
            f"node '{node.name or (node.output[0] if node.output else '?')}' ({node.op_type}) is malformed: "
            f"{type(e).__name__}: {str(e)[:160]}"
        ) from None
    source = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
    if node.op_type in _SUBGRAPH_OPS:
        source += " (subgraph)"
    op, attrs, params = result if result else ("unsupported", {}, {})
    attrs = {**attrs, **_fixable_tensors(node, op, values, stored, ctx.absorbed.get(node.output[0]))}
    outputs = list(node.output)
    if op == "linear" and ctx.absorbed.get(node.output[0]):
        outputs = [next(a for a, m in ctx.absorbed.items() if m == node.output[0] and a in absorbed_adds)]
    if node.op_type == "QuantizeLinear" and op == "clip":
        outputs = [ctx.fake_quant[node.output[0]]]
        source = "QuantizeLinear+DequantizeLinear"
    return Node(
        name=node.name or f"{node.op_type}_{node.output[0]}",
        op=op,
        source_op=source,
        inputs=[values[n] if n else None for n in node_inputs(node)],
        outputs=[values[n] for n in outputs if n],
        attrs=attrs,
        params=params,
        scope=scope_of(node),
    )
