"""torch.export ExportedProgram -> graph IR.

Weights come from the program's state dict and constants. Everything that does not depend on the signal
(positions, causal masks, shapes) is computed by running those ATen ops once on the real constants, so the
rules see masks as constants, exactly as the ONNX frontend does after folding.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from initcheck.errors import debugging
from initcheck.frontends.torch_ops import HANDLERS, NO_OPS, Emit, TorchContext, op_name
from initcheck.ir import NORMALIZATIONS, WEIGHTED, Graph, Node, Value
from initcheck.limits import check_shape
from initcheck.stats import TABLE_READERS, keeps_values, tensor_stats


def _to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.numpy()


def _flat_nodes(args) -> Iterable:
    import torch.fx

    for a in args:
        if isinstance(a, torch.fx.Node):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from _flat_nodes(a)
        elif isinstance(a, dict):
            yield from _flat_nodes(a.values())


def _fake(node):
    return node.meta.get("val")


def _shape(node) -> tuple | None:
    val = _fake(node)
    shape = getattr(val, "shape", None)
    if shape is None:
        return None
    return tuple(int(d) if str(d).lstrip("-").isdigit() else None for d in shape)


def _ndim(node) -> int:
    shape = _shape(node)
    return len(shape) if shape is not None else 0


def _is_float(node) -> bool:
    val = _fake(node)
    dtype = getattr(val, "dtype", None)
    return dtype is not None and dtype.is_floating_point


def scope_of(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return str(path)


def _is_meta_device(device) -> bool:
    import torch

    return (isinstance(device, torch.device) and device.type == "meta") or device == "meta"


# ops whose result is their first argument's entries rearranged: scaling one scales the other
VIEWS = {
    "t",
    "transpose",
    "permute",
    "view",
    "reshape",
    "_unsafe_view",
    "contiguous",
    "clone",
    "alias",
    "detach",
    "unsqueeze",
    "squeeze",
    "flatten",
    "_to_copy",
    "to",
    "lift_fresh_copy",
    "numpy_T",
}

# ops that carry integer ids unchanged in value on the way to a lookup
_ID_CARRIERS = {"view", "reshape", "unsqueeze", "squeeze", "expand", "to", "_to_copy", "clone", "slice", "flatten"}


def _concrete(example) -> bool:
    """A tensor with values (not one traced on the meta device, whose values do not exist)."""
    import torch

    return isinstance(example, torch.Tensor) and not example.is_meta


def _indexes_a_table(placeholder) -> bool:
    """Whether an integer input reaches an embedding's indices (token ids), through reshapes and casts."""
    front, seen = [placeholder], set()
    while front:
        node = front.pop()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            name = op_name(user.target) if user.op == "call_function" else ""
            if name == "embedding" and len(user.args) > 1 and user.args[1] is node:
                return True
            if name in _ID_CARRIERS:
                front.append(user)
    return False


# ops whose output holds entries of their first argument, wherever the indices point
_PICKS = {"gather", "index", "index_select", "take_along_dim"}

# ops that make a new tensor of a given (or another tensor's) shape, and the value they fill it with
_FILLED = {
    "new_zeros": lambda node: 0.0,
    "new_empty": lambda node: 0.0,
    "zeros_like": lambda node: 0.0,
    "empty_like": lambda node: 0.0,
    "new_ones": lambda node: 1.0,
    "ones_like": lambda node: 1.0,
    "new_full": lambda node: node.args[2],
    "full_like": lambda node: node.args[1],
}


class _Builder:
    def __init__(self, ep, training: bool, source: str, init=None):
        self.ep, self.training, self.source = ep, training, source
        self.tensors = _Constants(init)  # fx name -> torch value for constants and folded results
        self.stored: dict[str, str] = {}  # fx name -> the parameter (state-dict key) it is, or a view of
        self.signal: set[str] = set()
        self.held: dict = {}  # integer inputs held at the caller's example value (name -> tensor)
        self.alias: dict[str, str] = {}  # getitem fx name -> IR value name
        self.values: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self.inputs: list[str] = []
        self.notes: list[str] = []

    # -- placeholders and folding ---------------------------------------------------------------------
    def collect_inputs(self) -> None:
        import torch
        from torch.export.graph_signature import InputKind

        state, constants = self.ep.state_dict, self.ep.constants
        for spec in self.ep.graph_signature.input_specs:
            name = spec.arg.name
            if spec.kind == InputKind.USER_INPUT:
                self.inputs.append(name)
                continue
            target = spec.target
            if spec.kind == InputKind.PARAMETER:
                self.stored[name] = target
            tensor = state.get(target) if target in state else constants.get(target)
            if isinstance(tensor, torch.Tensor) and tensor.is_meta and self.tensors.source is not None:
                self.tensors.targets[name] = target  # a meta-device model: its init gives the value when needed
            elif isinstance(tensor, torch.Tensor):
                # buffers share storage with the user's module: never let an op touch the original
                self.tensors[name] = tensor.detach().clone() if spec.kind == InputKind.BUFFER else tensor.detach()
        placeholders = {n.name: n for n in self.ep.graph.nodes if n.op == "placeholder"}
        examples = self._example_inputs()
        for name in self.inputs:
            node = placeholders[name]
            if _is_float(node):
                self.signal.add(name)
            elif "mask" in name.lower() and (shape := _shape(node)) and None not in shape:
                self.tensors[name] = torch.ones(shape, dtype=_fake(node).dtype)
                self.notes.append(f"input '{name}' is taken as all ones (no padding)")
            elif not _indexes_a_table(node) and _concrete(examples.get(name)):
                # a diffusion model's timestep, a class label fed to arithmetic: the prediction and the probe both
                # hold it at the value the caller gave (random ids would be a different conditioning)
                self.tensors[name] = self.held[name] = examples[name].detach().clone()
                shown = (
                    self.held[name].tolist()
                    if self.held[name].numel() <= 4
                    else f"shape {tuple(self.held[name].shape)}"
                )
                self.notes.append(f"input '{name}' (integers that index no table) is held at its example value {shown}")

    def _example_inputs(self) -> dict:
        """The caller's example value of each user input, where the program kept them."""
        import torch.utils._pytree as pytree
        from torch.export.graph_signature import InputKind

        example = getattr(self.ep, "example_inputs", None)
        if not example:
            return {}
        flat, _ = pytree.tree_flatten(example)
        users = [s.arg.name for s in self.ep.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
        return dict(zip(users, flat)) if len(flat) == len(users) else {}

    def fold(self, node) -> bool:
        """Run a node whose inputs are all known constants; False if it cannot be folded."""
        import torch

        schema = getattr(node.target, "_schema", None)
        if schema is not None and schema.is_mutable:  # in-place ops (running-stat updates) are never run
            return False
        fill, shape = _FILLED.get(op_name(node.target)), _shape(node)
        if fill is not None and shape is not None:  # a fresh tensor: only the argument's shape matters
            self.tensors[node.name] = torch.full(shape, float(fill(node)), dtype=_fake(node).dtype)
            return True
        args_known = all(n.name in self.tensors for n in _flat_nodes(node.args)) and all(
            n.name in self.tensors for n in _flat_nodes(node.kwargs.values())
        )
        if not args_known:
            return False

        def sub(a):
            if isinstance(a, torch.fx.Node):
                return self.tensors[a.name]
            if _is_meta_device(a):  # traced from meta inputs (a meta-device model): computed here instead
                return torch.device("cpu")
            if isinstance(a, (list, tuple)):
                return type(a)(sub(x) for x in a)
            return a

        try:
            with torch.no_grad():
                self.tensors[node.name] = node.target(*sub(node.args), **{k: sub(v) for k, v in node.kwargs.items()})
            first = getattr(node.args[0], "name", None) if node.args else None
            if op_name(node.target) in VIEWS and first in self.stored:
                self.stored[node.name] = self.stored[first]  # W.t() is W, for a fix that rescales it
            return True
        except Exception:  # an op that cannot run on real tensors here stays unknown
            return False

    def fold_uniform_pick(self, node) -> bool:
        """A gather from a constant whose entries are all one value is that value, whatever the indices: a
        RoBERTa's token types, gathered from an all-zero buffer at positions computed from the token ids."""
        import torch

        data, shape = node.args[0], _shape(node)
        known = self.tensors.get(getattr(data, "name", None))
        if not isinstance(known, torch.Tensor) or known.numel() == 0 or shape is None or None in shape:
            return False
        first = known.reshape(-1)[0]
        if not bool((known == first).all()):
            return False
        self.tensors[node.name] = torch.full(shape, first.item(), dtype=_fake(node).dtype)
        return True

    # -- values ---------------------------------------------------------------------------------------
    def value(self, name: str, shape=None, dtype: str = "float32") -> Value:
        name = self.alias.get(name, name)
        if name not in self.values:
            self.values[name] = Value(name=name, shape=shape, dtype=dtype)
        return self.values[name]

    def constant(self, key: str, array: np.ndarray, table: bool = False) -> Value:
        v = self.value(key, tuple(array.shape), str(array.dtype))
        if v.const is None:
            v.const = tensor_stats(array) if array.dtype.kind in "fiub" else None
            v.is_weight = key in self.weight_names
            v.array = array if keeps_values(array, table and not v.is_weight) else None
        return v

    def ir_input(self, arg, owner: str, index: int, table: bool = False) -> Value | None:
        import torch

        if isinstance(arg, torch.fx.Node):
            name = self.alias.get(arg.name, arg.name)
            if name in self.signal:
                return self.value(name, _shape(arg))
            if arg.name in self.tensors and isinstance(self.tensors[arg.name], torch.Tensor):
                return self.constant(arg.name, _to_numpy(self.tensors[arg.name]), table)
            return self.value(name, _shape(arg), "unknown")
        if isinstance(arg, str):  # an intermediate emitted by a lowering
            return self.value(arg)
        if isinstance(arg, (int, float, bool)):
            return self.constant(f"{owner}__const{index}", np.array(float(arg)))
        return None

    # -- translation ----------------------------------------------------------------------------------
    def translate(self, node) -> None:
        name = op_name(node.target)
        if name == "getitem":
            self.alias[node.name] = f"{self.alias.get(node.args[0].name, node.args[0].name)}.{node.args[1]}"
            if self.alias[node.name] in self.signal or node.args[0].name in self.signal:
                self.signal.add(self.alias[node.name])
            return
        if name in NO_OPS:
            return
        handler = HANDLERS.get(name)
        ctx = TorchContext(
            {k: _to_numpy(t) for k, t in self._small_constants(node).items()},
            self.signal,
            self.training,
            {
                "shape": lambda a: _shape(a) if hasattr(a, "meta") else None,
                "stored": lambda a: self.stored.get(getattr(a, "name", "")),  # the parameter an argument is
            },
        )
        emits, failure = None, None
        if handler is not None:
            try:
                emits = handler(node, ctx)
            except Exception as e:  # a bug in the handler: reported as such (IC302), never as an unsupported op
                if debugging():
                    raise
                failure = f"{type(e).__name__}: {str(e)[:160]}"
        if emits is None:
            signal_args = [a for a in _flat_nodes(node.args) if self.alias.get(a.name, a.name) in self.signal]
            emits = [Emit("unsupported", signal_args, {"internal_error": failure} if failure else {})]
        for emit in emits:
            self.emit(node, emit, source=str(node.target))

    def _small_constants(self, node) -> dict:
        import torch

        return {
            a.name: self.tensors[a.name]
            for a in _flat_nodes(list(node.args) + list(node.kwargs.values()))
            if a.name in self.tensors and isinstance(self.tensors[a.name], torch.Tensor)
        }

    def emit(self, node, emit: Emit, source: str) -> None:
        tuple_valued = isinstance(_fake(node), (list, tuple))  # e.g. max_pool2d_with_indices: (values, indices)
        out_names = emit.outputs or [f"{node.name}.0" if tuple_valued else node.name]
        table = emit.op in TABLE_READERS
        inputs = [self.ir_input(a, out_names[0], i, table) for i, a in enumerate(emit.inputs)]
        outputs = []
        for out in out_names:
            shape = _shape(node) if out == node.name else self._derived_shape(node, out)
            outputs.append(self.value(out, shape))
            self.signal.add(out)
        self.signal.add(node.name)
        emit.attrs.update(self._fixable_tensors(node, emit.op))
        self.nodes.append(
            Node(
                name=out_names[0],
                op=emit.op,
                source_op=source,
                inputs=inputs,
                outputs=outputs,
                attrs=emit.attrs,
                params=emit.params,
                scope=scope_of(node),
            )
        )

    def _fixable_tensors(self, node, op: str) -> dict[str, str]:
        """The parameters a fix would change: a weighted layer's weight (2-D and more) and bias (1-D), a
        normalisation's scale (its first 1-D parameter: weight before bias in every ATen norm); none where a node
        reads several of one kind (a recurrent layer's matrices)."""
        args = [(self.stored[a.name], _ndim(a)) for a in _flat_nodes(node.args) if a.name in self.stored]
        found: dict[str, str] = {}
        if op in WEIGHTED:
            for attr, fits in (("weight_tensor", lambda d: d >= 2), ("bias_tensor", lambda d: d == 1)):
                names = {name for name, ndim in args if fits(ndim)}
                if len(names) == 1:
                    found[attr] = names.pop()
        elif op in NORMALIZATIONS:
            scale = next((name for name, ndim in args if ndim == 1), None)
            if scale is not None:
                found["scale_tensor"] = scale
        return found

    def _derived_shape(self, node, out: str):
        """Shapes of values a lowering creates: tuple elements, and attention internals."""
        val = _fake(node)
        if "." in out and isinstance(val, (list, tuple)):
            index = int(out.rsplit(".", 1)[1])
            item = val[index] if index < len(val) else None
            return tuple(item.shape) if item is not None and hasattr(item, "shape") else None
        if op_name(node.target) == "baddbmm":
            return _shape(node)
        if "__layer" in out and isinstance(val, (list, tuple)):  # a recurrent stack's inner layer: its sequence
            return tuple(val[0].shape)
        if op_name(node.target) == "scaled_dot_product_attention":
            q, k = (_shape(a) for a in node.args[:2])
            if q and k:
                if out.endswith("__kt"):
                    return k[:-2] + (k[-1], k[-2])
                return q[:-1] + (k[-2],)
        return None

    def build(self) -> Graph:
        self.weight_names = {s.arg.name for s in self.ep.graph_signature.input_specs if s.kind.name != "USER_INPUT"}
        for node in self.ep.graph.nodes:  # before anything of that size is folded or allocated
            check_shape(f"{self.source or 'model'}: tensor '{node.name}'", _shape(node) or ())
        self.collect_inputs()
        outputs = []
        for node in self.ep.graph.nodes:
            if node.op == "output":
                outputs = [self.alias.get(n.name, n.name) for n in _flat_nodes(node.args)]
                continue
            if node.op != "call_function":
                continue
            uses_signal = any(
                self.alias.get(a.name, a.name) in self.signal
                for a in _flat_nodes(list(node.args) + list(node.kwargs.values()))
            )
            if uses_signal and op_name(node.target) in _FILLED and self.fold(node):
                continue  # x.new_zeros(...): a constant, whatever x holds
            if uses_signal:
                if _is_float(node) or isinstance(_fake(node), (list, tuple)) or op_name(node.target) == "getitem":
                    self.translate(node)
                continue
            if self.fold(node) or (op_name(node.target) in _PICKS and self.fold_uniform_pick(node)):
                continue
            if op_name(node.target) == "embedding" and node.args[0].name in self.tensors:
                self.translate(node)  # token ids -> table rows: where the signal starts
        for name in self.inputs:
            self.value(name, None).is_input = True
        placeholders = {n.name: n for n in self.ep.graph.nodes if n.op == "placeholder"}
        for name in self.inputs:
            v = self.values.get(name) or self.value(name)
            v.shape = _shape(placeholders[name])
            v.dtype = str(_fake(placeholders[name]).dtype).replace("torch.", "")
            if name in self.held:
                v.array = _to_numpy(self.held[name])  # the probe feeds the same value
        graph_outputs = [self.values[n] for n in outputs if n in self.values]
        for v in graph_outputs:
            v.is_output = True
        graph = Graph(
            nodes=self.nodes,
            inputs=[self.values[n] for n in self.inputs if n in self.values],
            outputs=graph_outputs,
            values=self.values,
            source=self.source,
            producer_name="torch.export",
            opset=None,
            notes=self.notes,
        )
        graph.rewire()
        return graph


def from_exported_program(ep, training: bool = False, source: str = "", init=None) -> Graph:
    """init: for a program exported from a meta-device model, where its weights' values come from (InitOnDemand)."""
    return _Builder(ep, training, source, init).build()


class _Constants(dict):
    """fx name -> torch value; the weights of a meta-device model come from their init when first read."""

    def __init__(self, source=None):
        super().__init__()
        self.source, self.targets = source, {}

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name) or name in self.targets

    def __getitem__(self, name):
        if dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        return self.source.value(self.targets[name])
