"""The empirical probe: runs the model and measures what the symbolic pass predicts."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from initcheck.frontends import Executable
    from initcheck.ir import Graph
    from initcheck.probes.common import ProbeOptions, ProbeResult


def run_probe(executable: Executable, graph: Graph, options: ProbeOptions) -> ProbeResult:
    """Measure the graph's values by running what the frontend handed back: an exported program in torch, an
    ONNX model in onnxruntime (forward) and in its torch form (gradients)."""
    if executable.program is not None:
        from initcheck.probes.torch_probe import probe_program

        return probe_program(executable.program, graph, options)
    from initcheck.probes.onnx_probe import probe_onnx

    if executable.onnx_path is not None:
        return probe_onnx(executable.onnx_path, graph, options)
    with tempfile.TemporaryDirectory() as folder:  # onnxruntime reads a file; the bytes never touch the user's disk
        converted = Path(folder) / "model.onnx"
        converted.write_bytes(executable.onnx_bytes or b"")
        return probe_onnx(converted, graph, options)
