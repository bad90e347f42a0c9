"""Measure per-value moments of an ONNX model with onnxruntime (every intermediate exposed)."""

from __future__ import annotations

import numpy as np


def random_inputs(session, rng: np.random.Generator, vocab: int = 100) -> dict[str, np.ndarray]:
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        if "int" in inp.type:
            feeds[inp.name] = rng.integers(0, vocab, size=shape).astype(np.int64)
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def measure(path, names: list[str], runs: int = 64, seed: int = 0, vocab: int = 100) -> dict[str, tuple[float, float]]:
    """Mean and second moment of each named value, averaged over `runs` N(0,1) (or uniform-id) inputs."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    sums = {n: np.zeros(2) for n in names}
    for _ in range(runs):
        outs = session.run(names, random_inputs(session, rng, vocab))
        for name, out in zip(names, outs):
            x = np.asarray(out, dtype=np.float64)
            sums[name] += (x.mean(), (x * x).mean())
    return {n: (s[0] / runs, s[1] / runs) for n, s in sums.items()}
