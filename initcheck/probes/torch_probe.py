"""Probe for torch.export programs: an fx Interpreter over a copy of the program's module records every
value it computes and hooks its gradient; the user's own module is never run or touched."""

from __future__ import annotations

import math

import torch

from initcheck.errors import UsageError
from initcheck.frontends.torch_frontend import scope_of
from initcheck.ir import Graph
from initcheck.probes.common import (
    ProbeOptions,
    ProbeResult,
    by_input,
    draws,
    load_input_data,
    make_input,
    new_accumulator,
    probe_generator,
    resolve_device,
    run_loop,
    seed_backward,
    unit_cotangent,
)
from initcheck.probes.plan import ProbePlan, in_scope


class _CutReached(Exception):
    """The run reached the first block the plan leaves out; `live` holds what the rest would have read."""

    def __init__(self, live: list[tuple[str, torch.Tensor]]):
        super().__init__("cut")
        self.live = live


class _Recorder(torch.fx.Interpreter):
    def __init__(
        self,
        module,
        wanted: set[str],
        accumulator,
        batch_statistics: frozenset[str] | set[str] = frozenset(),
        cut: str | None = None,
    ):
        super().__init__(module)
        self.wanted, self.acc, self.batch_statistics, self.cut = wanted, accumulator, batch_statistics, cut
        self.position = {n: i for i, n in enumerate(module.graph.nodes)}

    def run_node(self, n):
        if self.cut is not None and n.op == "call_function" and in_scope(scope_of(n), self.cut):
            raise _CutReached(self._live_at(self.position[n]))
        if n.name in self.batch_statistics and n.op == "call_function":
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            out = _with_batch_statistics(n.target, args)
        elif n.op == "call_function" and f"{n.name}__layer0" in self.wanted:  # a packed stack the analysis split
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            out = _layer_by_layer(n.target, args, n.name, self._record)
        else:
            out = super().run_node(n)
        if isinstance(out, torch.Tensor) and n.name in self.wanted and out.is_floating_point() and out.grad_fn is None:
            out = out.detach().requires_grad_(True)  # where the signal starts (an embedding lookup): differentiate here
        items = (
            [(n.name, out)]
            if isinstance(out, torch.Tensor)
            else [(f"{n.name}.{i}", t) for i, t in enumerate(out) if isinstance(t, torch.Tensor)]
            if isinstance(out, (tuple, list))
            else []
        )
        for name, t in items:
            self._record(name, t)
        return out

    def _live_at(self, at: int) -> list[tuple[str, torch.Tensor]]:
        """Tensors computed before node `at` that it or a later node reads."""
        return [
            (node.name, value)
            for node, value in self.env.items()
            if isinstance(value, torch.Tensor) and any(self.position[u] >= at for u in node.users)
        ]

    def _record(self, name: str, t) -> None:
        if name in self.wanted and t.is_floating_point():
            self.acc.forward(name, t)
            if t.requires_grad:
                t.register_hook(lambda g, name=name: self.acc.backward(name, g))


def _layer_by_layer(target, args, name: str, record):
    """A packed multi-layer RNN/LSTM/GRU run one layer at a time (the same op, num_layers = 1), so that the
    sequence between layers, which the analysis reports as its own row (`<node>__layer<l>`), is measured too."""
    x, hx, params, has_biases, layers, dropout, train, bidirectional, batch_first = args[:9]
    directions = 2 if bidirectional else 1
    per_layer = (4 if has_biases else 2) * directions
    lstm = isinstance(hx, (list, tuple))
    finals: list[list] = [[], []]
    for layer in range(layers):
        rows = slice(layer * directions, (layer + 1) * directions)
        state = [hx[0][rows], hx[1][rows]] if lstm else hx[rows]
        weights = params[layer * per_layer : (layer + 1) * per_layer]
        out = target(x, state, weights, has_biases, 1, 0.0, train, bidirectional, batch_first)
        x = out[0]
        for i, final in enumerate(out[1:]):
            finals[i].append(final)
        if layer < layers - 1:
            record(f"{name}__layer{layer}", x)
            if train and dropout > 0:
                x = torch.nn.functional.dropout(x, float(dropout), True)
    return (x, *(torch.cat(f) for f in finals if f))


def _with_batch_statistics(target, args):
    """A batch norm the analysis reads as it will train (untrained running statistics): normalised with the batch's
    own statistics, as the symbolic pass predicts; the running buffers are neither read nor updated."""
    x, weight, bias = args[:3]
    name = str(target)
    eps = args[7] if "aten.batch_norm" in name and len(args) > 7 else args[6] if len(args) > 6 else 1e-5
    out = torch.nn.functional.batch_norm(x, None, None, weight, bias, training=True, eps=float(eps))
    if "aten.batch_norm" in name:
        return out
    empty = x.new_zeros(0)
    return (out, empty, empty)  # the _native_batch_norm_legit family returns (out, mean, invstd)


def _permute_weights(module, generator) -> None:
    """Same statistics, new instance: a random permutation of each weight tensor's entries (docs/theory.md §12)."""
    with torch.no_grad():
        for p in module.parameters():
            flat = p.detach().reshape(-1)
            p.copy_(flat[torch.randperm(flat.numel(), generator=generator).to(flat.device)].reshape(p.shape))


def weight_bytes(program) -> int:
    """What a copy of the program's weights and buffers takes."""
    tensors = list(program.state_dict.values()) + list(getattr(program, "constants", {}).values())
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


_AUTOCAST = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _autocast_dtype(name: str):
    if name not in _AUTOCAST:
        raise UsageError(f"probe dtype '{name}': expected one of {', '.join(_AUTOCAST)}")
    return _AUTOCAST[name]


def _seed_at_cut(
    live: list[tuple[str, torch.Tensor]], gradients: dict[str, float], shared: dict[str, float], generator
) -> str | None:
    """Backward from where the run stopped: each live tensor gets a random cotangent with the gradient energy the
    symbolic pass predicts there, and the share of it that every position of a sample has in common, so the
    prefix's gradients compare with the predictions. Returns why not, if not."""
    tensors = [(name, t) for name, t in live if t.is_floating_point() and t.requires_grad]
    missing = [name for name, _ in tensors if gradients.get(name) is None]
    if missing:
        return f"gradients not measured: no predicted gradient where the run stopped ({', '.join(missing[:3])})"
    if not tensors:
        return None
    cotangents = [
        _structured_cotangent(t.shape, shared.get(name, 0.0), generator).to(t.device, t.dtype)
        * math.sqrt(max(gradients[name], 0.0))
        for name, t in tensors
    ]
    torch.autograd.backward([t for _, t in tensors], cotangents)
    return None


def _structured_cotangent(shape, share: float, generator) -> torch.Tensor:
    """Mean square 1, of which `share` is one random vector per sample repeated at each of its positions (tokens
    of (B, T, C), pixels of (B, C, H, W)) and the rest independent entries."""
    share = min(max(share, 0.0), 1.0)
    if share == 0.0 or len(shape) < 3:
        return unit_cotangent(shape, generator)
    per_sample = (shape[0], 1, shape[2]) if len(shape) == 3 else (shape[0], shape[1], *([1] * (len(shape) - 2)))
    common = unit_cotangent(per_sample, generator).expand(shape)
    return math.sqrt(share) * common + math.sqrt(1.0 - share) * unit_cotangent(shape, generator)


def probe_program(program, graph: Graph, options: ProbeOptions, plan: ProbePlan | None = None) -> ProbeResult:
    plan = plan or ProbePlan()
    autocast = _autocast_dtype(options.dtype)
    device = resolve_device(options.device)
    module = program.module()
    # program.module() shares parameters with the user's model: work on detached tensors without gradients,
    # so .grad never reaches the user's; copies only where weights get permuted in place
    detached = {
        k: (v.detach().clone() if options.resample_weights else v.detach()).to(device)
        for k, v in module.state_dict(keep_vars=True).items()
    }
    module.load_state_dict(detached, assign=True)
    for p in module.parameters():
        p.requires_grad_(False)
    acc = new_accumulator(graph)
    wanted = {v.name for v in graph.values.values() if not v.is_input}
    batch_statistics = {n.name for n in graph.nodes if n.op == "batch_norm" and n.attrs.get("untrained_stats")}
    inputs_wanted = {v.name for v in graph.inputs if v.is_float}
    placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
    specs = [(n.name, tuple(n.meta["val"].shape), n.meta["val"].dtype) for n in placeholders if "val" in n.meta]
    notes: list[str]
    data, plan_inputs, notes = (
        by_input(load_input_data(options.input_data), [name for name, _, _ in specs]),
        draws(graph),
        [],
    )
    batch = specs[0][1][0] if specs and specs[0][1] else 1
    acc.batch = batch
    runs_per_seed = max(1, -(-options.batch // max(batch, 1)))
    generator = probe_generator()
    original = {k: v.detach().clone() for k, v in module.state_dict().items()} if options.resample_weights else None

    def step(seed: int, run: int) -> None:
        if options.resample_weights and run == 0 and seed > 0:
            module.load_state_dict(original)
            _permute_weights(module, generator)
        inputs = [
            make_input(name, shape, dtype, plan_inputs, generator, data, seed * runs_per_seed + run, device)
            for name, shape, dtype in specs
        ]
        for (name, _, _), x in zip(specs, inputs):
            if x.is_floating_point():
                x.requires_grad_(True)
                if name in inputs_wanted:  # the reference many findings measure against
                    acc.forward(name, x)
                    x.register_hook(lambda g, name=name: acc.backward(name, g))
        # flat in, flat out: the placeholders in order, the output node's tensors as they are (an output container
        # the file names need not be importable here: .pt2 files of HF and diffusers models)
        recorder = _Recorder(module, wanted, acc, batch_statistics, plan.cut)
        try:
            with torch.autocast(device.split(":")[0], dtype=autocast, enabled=autocast is not None):
                outputs = recorder.run(*inputs, enable_io_processing=False)
        except _CutReached as cut:
            if (why := _seed_at_cut(cut.live, plan.gradients, plan.shared, generator)) and why not in notes:
                notes.append(why)
            return
        # dicts, ModelOutputs and nested tuples (every HF and diffusers model): seed every tensor leaf
        seed_backward(torch.utils._pytree.tree_leaves(outputs), options.loss, generator)

    runs = run_loop(options, runs_per_seed, step, notes)
    if autocast is not None:
        notes.append(f"the probe ran under {options.dtype} autocast (mixed precision); statistics in float32")
    return ProbeResult(
        acc.results(),
        device,
        runs * batch,
        runs,
        options.loss,
        options.resample_weights,
        notes=list(plan.notes) + notes,
    )
