"""The empirical probe: runs the model and measures what the symbolic pass predicts."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from initcheck.frontends import Executable
    from initcheck.ir import Graph
    from initcheck.probes.common import ProbeOptions, ProbeResult
    from initcheck.probes.plan import ProbePlan
    from initcheck.report.model import LayerRow


def plan_for(
    executable: Executable,
    graph: Graph,
    rows: list[LayerRow],
    options: ProbeOptions,
    predicted_G: dict[str, float],
    predicted_shared: dict[str, float] | None = None,
) -> ProbePlan:
    """How much of this model the probe runs on its device (probes/plan.py): what it adds for weights, whether
    its batch dimension is free (ONNX with a symbolic batch), whether it can stop after a block (PyTorch)."""
    from initcheck.probes.common import resolve_device
    from initcheck.probes.plan import Footprint, activation_bytes, budget_bytes, graph_batch, plan_probe

    device = resolve_device(options.device)
    if executable.program is not None:
        from initcheck.probes.torch_probe import weight_bytes

        stored = weight_bytes(executable.program)
        weights = stored if device != "cpu" or options.resample_weights else 0
        if options.dtype != "float32":  # autocast's 16-bit copy of each weight, kept for the backward
            weights += stored // 2
        free_batch, can_cut = False, True
    else:
        from initcheck.probes.onnx_probe import onnx_facts

        stored, free_batch = onnx_facts(executable, graph)
        weights, can_cut = 2 * stored, False  # onnxruntime's copy and the torch form's
    footprint = Footprint(weights, activation_bytes(graph), graph_batch(graph), budget_bytes(device))
    return plan_probe(graph, rows, options, footprint, free_batch, predicted_G, can_cut, predicted_shared)


def run_probe(executable: Executable, graph: Graph, options: ProbeOptions, plan: ProbePlan) -> ProbeResult:
    """Measure the graph's values by running what the frontend handed back: an exported program in torch, an
    ONNX model in onnxruntime (forward) and in its torch form (gradients)."""
    if executable.program is not None:
        from initcheck.probes.torch_probe import probe_program

        return probe_program(executable.program, graph, options, plan)
    from initcheck.probes.onnx_probe import probe_onnx

    if executable.onnx_path is not None:
        return probe_onnx(executable.onnx_path, graph, options, plan)
    with tempfile.TemporaryDirectory() as folder:  # onnxruntime reads a file; the bytes never touch the user's disk
        converted = Path(folder) / "model.onnx"
        converted.write_bytes(executable.onnx_bytes or b"")
        return probe_onnx(converted, graph, options, plan)
