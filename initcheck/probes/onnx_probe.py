"""Probe for ONNX models: forward statistics from onnxruntime with every intermediate exposed; gradients from
the executable torch form of the same graph, whose forward values are cross-checked against onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from initcheck.errors import UsageError
from initcheck.ir import Graph
from initcheck.probes.common import (
    PROBE_SEED,
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
)
from initcheck.probes.plan import ProbePlan


def without_inactive_dropout(model, graph: Graph) -> None:
    """Dropout the analysis reads as inactive (eval mode) runs as the identity, even where the file marks it as
    training: otherwise onnxruntime and the torch form draw different masks (a false IC402) and every run
    measures other numbers."""
    from onnx import helper

    inactive = {n.outputs[0].name for n in graph.nodes if n.op == "dropout" and not n.attrs.get("training")}
    for i, node in enumerate(model.graph.node):
        if node.op_type == "Dropout" and node.output and node.output[0] in inactive:
            identity = helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name)
            model.graph.node[i].CopyFrom(identity)


def with_batch_statistics(model, graph: Graph, opset: int) -> None:
    """Batch norms the analysis reads as they will train (untrained running statistics) become the same
    normalisation with the batch's own statistics, written in plain ops so that onnxruntime (whose inference
    build ignores training_mode) and the torch form both run it; the output keeps its name."""
    import numpy as np
    from onnx import helper, numpy_helper

    chosen = {n.outputs[0].name: n for n in graph.nodes if n.op == "batch_norm" and n.attrs.get("untrained_stats")}
    if not chosen:
        return
    arrays = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        ir = chosen.get(node.output[0]) if node.op_type == "BatchNormalization" and node.output else None
        first = ir.inputs[0] if ir is not None else None
        rank = len(first.shape) if first is not None and first.shape else None
        if ir is None or rank is None or node.input[1] not in arrays or node.input[2] not in arrays:
            nodes.append(node)
            continue
        p, x, y = f"{node.output[0]}__bs", node.input[0], node.output[0]
        axes = [0] + list(range(2, rank))
        shape = [1, -1] + [1] * (rank - 2)
        gamma = numpy_helper.to_array(arrays[node.input[1]]).astype(np.float32).reshape(shape)
        beta = numpy_helper.to_array(arrays[node.input[2]]).astype(np.float32).reshape(shape)
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(gamma, f"{p}_gamma"),
                numpy_helper.from_array(beta, f"{p}_beta"),
                numpy_helper.from_array(np.array(eps, np.float32), f"{p}_eps"),
            ]
        )

        nodes += [
            _reduce_mean(model, x, f"{p}_mu", axes, opset),
            helper.make_node("Sub", [x, f"{p}_mu"], [f"{p}_d"]),
            helper.make_node("Mul", [f"{p}_d", f"{p}_d"], [f"{p}_d2"]),
            _reduce_mean(model, f"{p}_d2", f"{p}_var", axes, opset),
            helper.make_node("Add", [f"{p}_var", f"{p}_eps"], [f"{p}_ve"]),
            helper.make_node("Sqrt", [f"{p}_ve"], [f"{p}_sd"]),
            helper.make_node("Div", [f"{p}_d", f"{p}_sd"], [f"{p}_n"]),
            helper.make_node("Mul", [f"{p}_n", f"{p}_gamma"], [f"{p}_s"]),
            helper.make_node("Add", [f"{p}_s", f"{p}_beta"], [y]),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _reduce_mean(model, source: str, out: str, axes: list[int], opset: int):
    """ReduceMean over `axes`, keepdims: axes an input from opset 18, an attribute before."""
    import numpy as np
    from onnx import helper, numpy_helper

    if opset >= 18:
        model.graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), f"{out}_axes"))
        return helper.make_node("ReduceMean", [source, f"{out}_axes"], [out], keepdims=1)
    return helper.make_node("ReduceMean", [source], [out], axes=axes, keepdims=1)


def _session(model, outputs: list[str], device: str):
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in model.graph.output}
    for name in outputs:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    providers = (
        ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
    )
    available = set(ort.get_available_providers())
    return ort.InferenceSession(model.SerializeToString(), options, providers=[p for p in providers if p in available])


def _input_specs(model, graph: Graph, batch: int) -> tuple[list[tuple[str, tuple, str]], bool]:
    """Input shapes: the file's (or --input's), with a symbolic batch dimension set to the probe batch."""
    from initcheck.frontends.onnx_load import dims_of

    declared = {i.name: dims_of(i.type) for i in model.graph.input}
    specs, batched = [], False
    for value in graph.inputs:
        shape = list(value.shape or ())
        dims = declared.get(value.name) or []
        if shape and dims and not isinstance(dims[0], int):
            shape[0], batched = batch, True
        specs.append((value.name, tuple(shape), value.dtype))
    return specs, batched


class _TorchForm:
    """Runs the ONNX nodes with torch ops, recording gradients of the wanted values."""

    def __init__(self, model, device: str, opset: int):
        import torch
        from onnx import numpy_helper

        from initcheck.frontends.onnx_load import topological_order

        self.nodes = topological_order(model.graph)
        self.opset, self.device = opset, device
        self.constants = {}
        for t in model.graph.initializer:
            self.constants[t.name] = torch.from_numpy(np.array(numpy_helper.to_array(t))).to(device)

    def run(self, feeds: dict, wanted: set[str], accumulator, record: dict | None = None):
        import torch
        from onnx import numpy_helper

        from initcheck.probes.onnx_torch import run_node

        values = dict(self.constants)
        values.update(feeds)
        for node in self.nodes:
            if node.op_type == "Constant":
                attr = node.attribute[0]
                array = (
                    numpy_helper.to_array(attr.t)
                    if attr.name == "value"
                    else np.array(
                        attr.f
                        if attr.name == "value_float"
                        else attr.floats
                        if attr.name == "value_floats"
                        else attr.i
                        if attr.name == "value_int"
                        else list(attr.ints)
                    )
                )
                values[node.output[0]] = torch.as_tensor(np.array(array)).to(self.device)
                continue
            out = run_node(node, [values.get(n) if n else None for n in node.input], self.opset)
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            for name, t in zip(node.output, outs):
                if name in wanted and isinstance(t, torch.Tensor) and t.is_floating_point() and t.grad_fn is None:
                    t = t.detach().requires_grad_(
                        True
                    )  # where the signal starts (an embedding lookup): differentiate here
                values[name] = t
                if name in wanted and isinstance(t, torch.Tensor) and t.is_floating_point():
                    if record is not None:
                        record[name] = t.detach()
                    if t.requires_grad:
                        t.register_hook(lambda g, name=name: accumulator.backward(name, g))
        return values


def onnx_facts(executable, graph: Graph) -> tuple[int, bool]:
    """(the bytes of the model's weights, whether its first input's batch dimension is free), read without loading
    a weight: external data stays in its files."""
    import onnx
    from onnx import helper

    from initcheck.frontends.onnx_load import read_model

    if executable.onnx_path:
        model = read_model(executable.onnx_path, stream=True)
    else:
        model = onnx.load_from_string(executable.onnx_bytes)
    weights = sum(
        int(np.prod(t.dims, dtype=np.int64)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        for t in model.graph.initializer
    )
    return weights, _input_specs(model, graph, 1)[1]


def probe_onnx(path: Path, graph: Graph, options: ProbeOptions, plan: ProbePlan | None = None) -> ProbeResult:
    import torch

    from initcheck.frontends.onnx_load import read_model
    from initcheck.probes.onnx_torch import NotExecutable

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UsageError("probing ONNX models needs onnxruntime: pip install onnxruntime (or --no-probe)") from None
    if options.dtype != "float32":
        raise UsageError("--probe-dtype: ONNX files are probed as stored (float32); mixed precision is for PyTorch")
    device = resolve_device(options.device)
    model = read_model(Path(path))
    opset = graph.opset or 13
    with_batch_statistics(model, graph, opset)
    without_inactive_dropout(model, graph)
    active_dropout = any(n.op_type == "Dropout" for n in model.graph.node)
    acc = new_accumulator(graph)
    produced = {o for n in model.graph.node for o in n.output}
    wanted = [v.name for n in graph.nodes for v in n.outputs if v.name in produced and v.is_float]
    per_run = plan.run_batch if plan is not None and plan.run_batch else options.batch
    specs, batched = _input_specs(model, graph, per_run)
    inputs_wanted = [name for name, _, _ in specs if name in graph.values and graph.values[name].is_float]
    session = _session(model, wanted, device)
    form = _TorchForm(model, device, opset)
    data, plan_inputs, notes = (
        by_input(load_input_data(options.input_data), [name for name, _, _ in specs]),
        draws(graph),
        [],
    )
    run_batch = specs[0][1][0] if specs and specs[0][1] else 1
    runs_per_seed = max(1, -(-options.batch // max(run_batch, 1)))
    acc.batch = run_batch
    generator = probe_generator()
    state: dict[str, Any] = {"backward": True, "max_diff": None}
    torch_dtypes = {
        "float32": torch.float32,
        "float16": torch.float16,
        "float64": torch.float64,
        "int64": torch.int64,
        "int32": torch.int32,
        "bool": torch.bool,
        "uint8": torch.uint8,
    }

    def step(seed: int, run: int) -> None:
        feeds = {
            name: make_input(
                name,
                shape,
                torch_dtypes.get(dtype, torch.float32),
                plan_inputs,
                generator,
                data,
                seed * runs_per_seed + run,
                "cpu",
            )
            for name, shape, dtype in specs
        }
        arrays = forward_statistics(session, wanted, feeds, acc)
        for name in inputs_wanted:
            acc.forward(name, feeds[name].to(device))
        if not state["backward"]:
            return
        inputs = {k: v.to(device).requires_grad_(v.is_floating_point()) for k, v in feeds.items()}
        record: dict | None = {} if seed == 0 and run == 0 else None
        try:
            values = form.run(inputs, set(wanted), acc, record)
        except NotExecutable as e:
            state["backward"] = False
            notes.append(f"gradients not measured: {e}")
            return
        if record is not None and not active_dropout:  # two runtimes draw two masks: nothing to compare
            state["max_diff"] = _max_difference(record, dict(zip(wanted, arrays)))
        outputs = [values[o.name] for o in model.graph.output if o.name in values]
        seed_backward(outputs, options.loss, generator)

    if options.resample_weights:
        notes.append("--resample-weights applies to PyTorch models; ONNX weights were used as stored")
    if active_dropout:
        notes.append(
            "the torch form is not cross-checked against onnxruntime: active dropout draws its own masks "
            "in each runtime"
        )
    import onnxruntime

    onnxruntime.set_seed(PROBE_SEED)  # active dropout's masks the same on every run: byte-identical reports
    with torch.random.fork_rng(devices=[]):  # the torch form's masks too, without touching the caller's RNG
        torch.manual_seed(PROBE_SEED)
        runs = run_loop(options, runs_per_seed, step, notes)
    diff, where = state["max_diff"] or (None, None)
    return ProbeResult(
        acc.results(),
        device,
        runs * run_batch,
        runs,
        options.loss,
        False,
        max_relative_difference=diff,
        max_difference_at=where,
        notes=list(plan.notes if plan else ()) + notes,
    )


def forward_statistics(session, wanted: list[str], feeds: dict, accumulator) -> list:
    """One onnxruntime run with every wanted intermediate exposed, reduced into the accumulator."""
    import torch

    arrays = session.run(wanted, {k: v.numpy() for k, v in feeds.items()})
    for name, array in zip(wanted, arrays):
        accumulator.forward(name, torch.from_numpy(np.asarray(array)))
    return arrays


def _max_difference(torch_values: dict, ort_values: dict) -> tuple[float, str] | None:
    worst = None
    for name, t in torch_values.items():
        ref = np.asarray(ort_values.get(name), dtype=np.float64)
        got = t.double().cpu().numpy()
        if ref.shape != got.shape or not np.isfinite(ref).all():
            continue
        scale = np.linalg.norm(ref)
        diff = float(np.linalg.norm(got - ref) / scale) if scale > 0 else float(np.abs(got).max(initial=0.0))
        if worst is None or diff > worst[0]:
            worst = (diff, name)
    return worst
