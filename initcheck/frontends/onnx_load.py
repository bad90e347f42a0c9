"""Reading an ONNX file safely, fixing input shapes, inferring shapes and folding constants."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from initcheck.errors import ModelLoadError, UsageError
from initcheck.limits import check_shape
from initcheck.stats import SMALL_CONST

_BATCH_NAMES = {"batch", "batch_size", "n", "b", "bs", "batchsize", "n_batch", "num_batch"}
# Ops folded even when their inputs are large: cheap views or casts of weights.
_CHEAP = {"Identity", "Cast", "Transpose", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "CastLike"}
_NEVER_FOLD = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "If",
    "Loop",
    "Scan",
}
_FOLD_LIMIT = 1 << 22
_FOLD_OUTPUT_LIMIT = 1 << 25  # elements: a 4096x4096 attention mask still folds


def read_model(path: Path, stream: bool = False, as_stored: bool = False):
    """The model, checked. Its external data is read into the model, or with `stream` left in its files (checked
    all the same) for `external_tensors` to map one tensor at a time. `as_stored`: the graph as the file has it
    (fused norms not expanded), for writing it back."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, TypeError) as e:
        raise ModelLoadError(
            f"{path}: not a valid ONNX file ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'could not parse'})"
        ) from None
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read ({e.strerror})") from None
    if not model.graph.node and not model.graph.input:
        raise ModelLoadError(f"{path}: not a valid ONNX file (empty graph)")
    problem = structural_problem(model)
    if problem:
        raise ModelLoadError(f"{path}: not a valid ONNX file ({problem})")
    externals = external_tensors(model, path)
    weights = {t.name for t in model.graph.initializer}
    # streamed, only the graph's weights stay in their files: constants inside nodes are read as usual
    _load_external_data([(t, where) for t, where in externals if not (stream and t.name in weights)])
    if not as_stored:
        expand_fused_norms(model)
    return model


# onnxruntime's fused residual norms (its transformer optimizer writes them): op -> standard norm op
_SKIP_NORMS = {
    "SkipLayerNormalization": "LayerNormalization",
    "SkipSimplifiedLayerNormalization": "SimplifiedLayerNormalization",
}


def expand_fused_norms(model) -> None:
    """com.microsoft Skip(Simplified)LayerNormalization = norm(input + skip [+ bias]), with the sum as its 4th output
    (the residual stream): written back as Add nodes and the standard norm, so every frontend rule, the probe's
    torch form and onnxruntime see the same graph. Left alone where its mean/inv-std outputs are read."""
    from onnx import helper

    used = {name for n in model.graph.node for name in n.input} | {o.name for o in model.graph.output}
    nodes = []
    for node in model.graph.node:
        target = _SKIP_NORMS.get(node.op_type) if node.domain == "com.microsoft" else None
        if target is None or len(node.input) < 3 or any(o in used for o in node.output[1:3] if o):
            nodes.append(node)
            continue
        x, skip, gamma = node.input[:3]
        bias_at = 4 if target == "LayerNormalization" else 3  # SkipLayerNorm: (x, skip, gamma, beta, bias)
        beta = node.input[3] if bias_at == 4 and len(node.input) > 3 else ""
        bias = node.input[bias_at] if len(node.input) > bias_at else ""
        total = node.output[3] if len(node.output) > 3 and node.output[3] else f"{node.output[0]}__sum"
        partial = f"{total}__partial" if bias else total
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        nodes.append(helper.make_node("Add", [x, skip], [partial], name=f"{node.name}/add"))
        if bias:
            nodes.append(helper.make_node("Add", [partial, bias], [total], name=f"{node.name}/add_bias"))
        norm_inputs = [total, gamma] + ([beta] if beta else [])
        nodes.append(helper.make_node(target, norm_inputs, [node.output[0]], name=node.name, axis=-1, epsilon=eps))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def structural_problem(model) -> str | None:
    """What makes a parsed protobuf unusable as a graph: names that are not text (a damaged file decodes them
    as bytes), nodes without outputs, or fewer inputs than the op's schema requires. None if it is usable."""
    import onnx.defs

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    named = [*graph.input, *graph.output, *graph.value_info, *graph.initializer]
    if any(not isinstance(v.name, str) for v in named):
        return "a tensor name is not valid UTF-8 text"
    for node in graph.node:
        texts = [node.name, node.op_type, node.domain, *node.input, *node.output]
        if any(not isinstance(t, str) for t in texts):
            return "a node's name, type or tensor names are not valid UTF-8 text"
        if not node.output or not any(node.output):
            return f"node '{node.name}' ({node.op_type}) has no output"
        if node.domain in ("", "ai.onnx") and opset and onnx.defs.has(node.op_type):
            try:
                schema = onnx.defs.get_schema(node.op_type, opset, "")
            except onnx.defs.SchemaError:
                continue  # not defined at this opset: analysed around as unsupported
            given = len(node.input)
            if given < schema.min_input or given > schema.max_input:
                return (
                    f"node '{node.name}' ({node.op_type}) has {given} inputs; opset {opset} takes "
                    f"{schema.min_input}..{schema.max_input}"
                )
    return None


@dataclass(frozen=True)
class ExternalTensor:
    """Where one tensor's bytes lie in an external data file (checked: inside the model's folder, long enough)."""

    file: Path
    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]

    def read(self) -> np.ndarray:
        """The tensor, memory-mapped read-only: pages come from the file as they are read, and go with the map.
        Input files are never written."""
        count = int(np.prod(self.shape, dtype=np.int64))
        if count * self.dtype.itemsize < _MAP_FROM:
            return np.fromfile(self.file, self.dtype, count, offset=self.offset).reshape(self.shape)
        return np.memmap(self.file, self.dtype, "r", offset=self.offset, shape=self.shape)


_MAP_FROM = 1 << 20  # bytes: smaller tensors are simply read


def external_tensors(model, path: Path) -> list[tuple[Any, ExternalTensor]]:
    """Every tensor with external data and where its bytes are, checked: exactly the tensor's own bytes, in a
    regular file the model may name."""
    from onnx import external_data_helper as ext

    found = []
    for tensor in ext._get_all_tensors(model):
        if not ext.uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        target = external_data_file(path, tensor.name, info.get("location", ""))
        check_shape(f"{path}: weight '{tensor.name}'", tensor.dims)
        try:
            offset, length = int(info.get("offset", 0) or 0), int(info.get("length", -1) or 0)
        except ValueError:
            raise ModelLoadError(
                f"{path}: tensor '{tensor.name}' has a malformed external data offset or length"
            ) from None
        if offset < 0 or length < -1:
            raise ModelLoadError(f"{path}: tensor '{tensor.name}' has a negative external data offset or length")
        dtype = _element_type(tensor, path)
        size = int(np.prod(tensor.dims, dtype=np.int64)) * dtype.itemsize
        if length not in (-1, size):  # -1: no length given
            raise ModelLoadError(
                f"{path}: tensor '{tensor.name}' declares {length:,} bytes of external data but its "
                f"shape {list(tensor.dims)} and type need {size:,}; refused"
            )
        available = target.stat().st_size - offset
        if available < size:
            raise ModelLoadError(
                f"{path}: external data '{info.get('location')}' holds {max(available, 0):,} bytes at "
                f"offset {offset:,} for tensor '{tensor.name}', which needs {size:,}"
            )
        found.append((tensor, ExternalTensor(target, offset, dtype, tuple(int(d) for d in tensor.dims))))
    return found


def _load_external_data(externals: list[tuple[Any, ExternalTensor]]) -> None:
    """Read each checked tensor's bytes into the model: never more than the tensor's own size."""
    for tensor, where in externals:
        with where.file.open("rb") as f:
            f.seek(where.offset)
            tensor.raw_data = f.read(int(np.prod(where.shape, dtype=np.int64)) * where.dtype.itemsize)
        del tensor.external_data[:]
        tensor.data_location = 0  # TensorProto.DEFAULT: the bytes are now inline


def external_data_file(path: Path, tensor: str, location: str) -> Path:
    """The file holding a tensor's external data. The location is a relative path that stays inside the model's
    folder (as written); a symbolic link there may lead elsewhere only into the folder the model file itself
    resolves into (how the Hugging Face hub cache links `snapshots/<rev>/` files into `blobs/`); and the target
    must be a regular file, never a device, FIFO or folder."""
    if not location or "\0" in location:
        raise ModelLoadError(f"{path}: tensor '{tensor}' has no usable external data location")
    folder = path.absolute().parent
    lexical = Path(os.path.normpath(folder / location))
    if os.path.isabs(location) or folder not in lexical.parents:
        raise ModelLoadError(f"{path}: external data '{location}' of tensor '{tensor}' lies outside the model's folder")
    target = lexical.resolve()
    allowed = (folder.resolve(), path.resolve().parent)
    if not any(root == target.parent or root in target.parents for root in allowed):
        raise ModelLoadError(
            f"{path}: external data '{location}' of tensor '{tensor}' links outside the model's folder"
        )
    if not target.exists():
        raise ModelLoadError(f"{path}: external data file '{location}' for tensor '{tensor}' is missing")
    if not target.is_file():
        raise ModelLoadError(f"{path}: external data '{location}' of tensor '{tensor}' is not a regular file")
    return target


def _element_type(tensor, path: Path) -> np.dtype:
    """The tensor's numpy element type, little-endian as ONNX stores it."""
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
    except Exception:  # an unknown element type
        raise ModelLoadError(f"{path}: tensor '{tensor.name}' has an unknown element type {tensor.data_type}") from None


def dims_of(type_proto) -> list[int | str | None] | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in type_proto.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


# (op, input slot) pairs that carry shapes, axes, indices or a dtype example, never signal: an empty tensor there is
# a valid value (Reduce* axes of shape [0] mean "all axes" or "none"; CastLike's example only lends its type)
_CONTROL_SLOTS = {
    "CastLike": {1},
    "Reshape": {1},
    "Expand": {1},
    "Tile": {1},
    "Slice": {1, 2, 3, 4},
    "Pad": {1, 2, 3},
    "Resize": {1, 2, 3},
    "Upsample": {1},
    "TopK": {1},
    "Squeeze": {1},
    "Unsqueeze": {1},
    "ConstantOfShape": {0},
    "OneHot": {1, 2},
    "Split": {1},
    "ReduceSum": {1},
    "ReduceMean": {1},
    "ReduceMax": {1},
    "ReduceMin": {1},
    "ReduceProd": {1},
    "ReduceL1": {1},
    "ReduceL2": {1},
    "ReduceLogSum": {1},
    "ReduceLogSumExp": {1},
    "ReduceSumSquare": {1},
    "Range": {0, 1, 2},
}


def control_inputs(model) -> set[str]:
    """Graph inputs used only in control slots (shapes, axes, dtype examples), or not used at all."""
    uses: dict[str, bool] = {}
    for node in model.graph.node:
        slots = _CONTROL_SLOTS.get(node.op_type, set())
        for slot, name in enumerate(node.input):
            uses[name] = uses.get(name, True) and slot in slots
    return {i.name for i in model.graph.input if uses.get(i.name, True)}


def resolve_input_shapes(model, overrides: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for every graph input: --input overrides (which must agree with every static dimension),
    batch-like symbolic dims -> 1. Every missing dimension is named in one message."""
    init_names = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    names = {i.name for i in inputs}
    for name in overrides:
        if name not in names:
            raise UsageError(
                f"--input {name}: the model has no input named '{name}' (inputs: {', '.join(sorted(names)) or 'none'})"
            )
    control = control_inputs(model)
    shapes, missing = {}, []
    for inp in inputs:
        kind = inp.type.WhichOneof("value")
        if kind != "tensor_type":
            what = {
                "sequence_type": "a sequence",
                "optional_type": "an optional value",
                "map_type": "a map",
                "sparse_tensor_type": "a sparse tensor",
            }.get(kind, "not a tensor")
            raise UsageError(f"input '{inp.name}' is {what}; initcheck analyses models whose inputs are tensors")
        dims = dims_of(inp.type)
        if inp.name in overrides:
            shapes[inp.name] = _checked_override(inp.name, tuple(overrides[inp.name]), dims)
            continue
        if dims is None:
            missing.append(f"{inp.name}=DIMxDIM... (no declared shape)")
            continue
        concrete, shown = [], []  # shown: the dims as the user would pass them, <name> where a size is needed
        for axis, d in enumerate(dims):
            if isinstance(d, int) and d > 0:
                concrete.append(d)
            elif d == 0 and inp.name in control:
                concrete.append(0)
            elif d == 0:
                raise UsageError(
                    f"input '{inp.name}' declares an empty dimension {axis} (size 0): nothing would flow "
                    f"through the model; pass --input {inp.name}=" + "x".join(str(x or "N") for x in dims)
                )
            elif axis == 0 and (d is None or str(d).lower() in _BATCH_NAMES or str(d).startswith(("unk__", "s"))):
                concrete.append(1)
            shown.append(str(concrete[-1]) if len(concrete) == axis + 1 else f"<{d or '?'}>")
            if len(concrete) < axis + 1:
                concrete.append(-1)
        if -1 in concrete:
            missing.append(f"{inp.name}=" + "x".join(shown))
            continue
        shapes[inp.name] = tuple(concrete)
    if missing:
        raise UsageError("dynamic input dimensions need sizes: pass " + " ".join(f"--input {m}" for m in missing))
    return shapes


def _checked_override(name: str, shape: tuple[int, ...], dims) -> tuple[int, ...]:
    """An --input shape may fill dynamic dimensions, never contradict a static one or the rank."""
    if dims is None:
        return shape
    declared = "x".join(str(d) if isinstance(d, int) and d > 0 else str(d or "?") for d in dims)
    if len(shape) != len(dims):
        raise UsageError(
            f"--input {name}={'x'.join(map(str, shape))}: the model declares {name} with {len(dims)} "
            f"dimensions ({declared})"
        )
    for axis, (given, d) in enumerate(zip(shape, dims)):
        if isinstance(d, int) and d > 0 and given != d:
            raise UsageError(
                f"--input {name}={'x'.join(map(str, shape))}: dimension {axis} of {name} is fixed at {d} "
                f"in the model ({declared})"
            )
    return shape


def infer_shapes(model, input_shapes: dict[str, tuple[int, ...]], known: dict[str, np.ndarray]):
    """Shape inference on a copy without the large weights (milliseconds instead of seconds), with the
    inputs fixed and already-folded small constants supplied as initializers."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    g = light.graph
    produced_by_folding = set(known) - {t.name for t in graph.initializer}
    g.node.extend(n for n in graph.node if not (n.output and all(o in produced_by_folding for o in n.output)))
    g.output.extend(graph.output)
    init_names = set()
    for t in graph.initializer:
        init_names.add(t.name)
        if np.prod(t.dims, dtype=np.int64) <= SMALL_CONST:
            g.initializer.append(t)
        else:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    for name, arr in known.items():
        if name in init_names:
            continue
        if arr.size <= SMALL_CONST:
            g.initializer.append(numpy_helper.from_array(np.asarray(arr), name))
        else:  # its shape only: a large folded constant (a position table gathered at fixed ids) must not leave
            # everything after it unshaped
            elem = helper.np_dtype_to_tensor_dtype(np.asarray(arr).dtype)
            g.input.append(helper.make_tensor_value_info(name, elem, list(arr.shape)))
    for inp in graph.input:
        if inp.name in init_names:
            continue
        elem = inp.type.tensor_type.elem_type
        g.input.append(helper.make_tensor_value_info(inp.name, elem, list(input_shapes.get(inp.name, []))))
    for vi in graph.value_info:
        g.value_info.append(vi)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort: rules fall back where shapes are unknown
        return {}
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = dims_of(vi.type)
        if dims is not None:
            shapes[vi.name] = (
                tuple(d if isinstance(d, int) and d >= 0 else None for d in dims),
                vi.type.tensor_type.elem_type,
            )
    return shapes


# onnx.reference's GatherElements fails on broadcast-shaped indices (onnx 1.23): numpy instead
_NUMPY_FOLDS = {
    "GatherElements": lambda inputs, attrs: np.take_along_axis(
        inputs[0], inputs[1].astype(np.int64), attrs.get("axis", 0)
    ),
}


def fold_node(node, arrays: dict[str, np.ndarray], opset: int, shapes: dict) -> list[np.ndarray] | None:
    """Evaluate a node whose inputs are all known constants (weights, shapes, masks)."""
    if node.op_type in _NEVER_FOLD or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type in ("Shape", "Size"):
        known = arrays.get(node.input[0])
        shape = known.shape if known is not None else shapes.get(node.input[0], (None,))[0]
        if shape is None or any(d is None for d in shape):
            return None
        full = np.array(shape, dtype=np.int64)
        if node.op_type == "Size":
            return [np.array(np.prod(full), dtype=np.int64)]
        attrs = {a.name: a.i for a in node.attribute}
        return [full[attrs.get("start", 0) : attrs.get("end", len(full)) or None]]
    inputs = [arrays.get(name) if name else None for name in node.input]
    if node.op_type in _PICKS and inputs[0] is not None and len(inputs) > 1 and inputs[1] is None:
        return _uniform_pick(node, inputs[0], shapes)
    if any(name and arr is None for name, arr in zip(node.input, inputs)):
        return None
    if node.op_type not in _CHEAP and sum(a.size for a in inputs if a is not None) > _FOLD_LIMIT:
        return None
    if (_output_size(node, inputs, shapes) or 0) > _FOLD_OUTPUT_LIMIT:
        return None  # a few bytes can ask for a huge constant (ConstantOfShape, Expand, Tile, Range)
    if node.op_type in _NUMPY_FOLDS:
        attrs = {a.name: a.i for a in node.attribute}
        try:
            return [_NUMPY_FOLDS[node.op_type](inputs, attrs)]
        except (ValueError, IndexError):
            return None
    from onnx.reference import ReferenceEvaluator

    try:
        evaluator = ReferenceEvaluator(node, opsets={"": opset})
        feeds = {name: arr for name, arr in zip(node.input, inputs) if name}
        with np.errstate(all="ignore"):  # log(0) etc. in mask/bucket computations are expected
            outs = evaluator.run(None, feeds)
    except Exception:  # an op the reference runtime cannot evaluate stays unfolded
        return None
    return [np.asarray(o) for o in outs]


_PICKS = {"Gather", "GatherElements", "GatherND"}


def _uniform_pick(node, data: np.ndarray, shapes: dict) -> list[np.ndarray] | None:
    """A gather from a constant whose entries are all one value is that value, whatever the indices: a
    RoBERTa's token types, gathered from an all-zero buffer at positions computed from the token ids."""
    shape = shapes.get(node.output[0], (None,))[0]
    if data.size == 0 or shape is None or None in shape or not (data == data.flat[0]).all():
        return None
    return [np.full(shape, data.flat[0], dtype=data.dtype)]


_SIZE_FROM_DATA = {"ConstantOfShape", "Expand", "Tile", "OneHot", "Range"}


def _output_size(node, inputs: list, shapes: dict) -> float | None:
    """Elements the node would produce, from inferred shapes or, for ops whose size is data, from the data
    (in float: products of hostile values must not overflow)."""
    inferred = shapes.get(node.output[0], (None,))[0] if node.output else None
    if inferred is not None and all(isinstance(d, int) for d in inferred):
        return float(np.prod(inferred, dtype=np.float64))
    if node.op_type not in _SIZE_FROM_DATA:
        return None
    values = [
        np.abs(np.asarray(a, dtype=np.float64)) if a is not None and a.dtype.kind in "iuf" else None for a in inputs
    ]
    if (
        not values
        or values[0] is None
        or (node.op_type != "ConstantOfShape" and (len(values) < 2 or values[1] is None))
    ):
        return None
    first = values[0]
    second = values[1] if len(values) > 1 and values[1] is not None else np.zeros(0)  # checked above
    assert first is not None
    with np.errstate(all="ignore"):
        if node.op_type == "ConstantOfShape":
            return float(np.prod(first))
        if node.op_type == "Expand":  # broadcast of the input's shape with the requested one
            shape, requested = list(first.shape), [float(d) for d in second.reshape(-1)]
            rank = max(len(shape), len(requested))
            shape, requested = [1] * (rank - len(shape)) + shape, [1.0] * (rank - len(requested)) + requested
            return float(np.prod([max(a, b) for a, b in zip(shape, requested)]))
        if node.op_type in ("Tile", "OneHot"):
            return first.size * float(np.prod(second))
        if len(values) == 3 and values[2] is not None:  # Range
            start, limit, delta = (float(v.reshape(-1)[0]) if v is not None and v.size else 0.0 for v in values)
            return (limit + start) / delta if delta else float("inf")  # an upper bound: values are |.|
    return None


def topological_order(graph) -> list:
    """Nodes in dependency order (ONNX requires it, but not every file obeys)."""
    produced = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    order, state = [], {}
    for start in range(len(graph.node)):
        stack = [(start, False)]
        while stack:
            i, done = stack.pop()
            if done:
                state[i] = 2
                order.append(graph.node[i])
                continue
            if state.get(i):
                continue
            state[i] = 1
            stack.append((i, True))
            for name in graph.node[i].input:
                j = produced.get(name)
                if j is not None and not state.get(j):
                    stack.append((j, False))
    return order
