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


def measure(
    path, names: list[str], runs: int = 64, seed: int = 0, vocab: int = 100, graph=None
) -> dict[str, tuple[float, float, float]]:
    """Mean, second moment and the second moment's relative standard error of each named value,
    averaged over `runs` N(0,1) (or uniform-id) inputs. With the analysed graph, batch norms it reads with batch
    statistics (untrained running statistics) run that way too, as the probe runs them."""
    import onnx
    import onnxruntime as ort

    from initcheck.probes.onnx_probe import with_batch_statistics

    model = onnx.load(str(path))
    if graph is not None:
        with_batch_statistics(model, graph, graph.opset or 13)
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    sums = {n: np.zeros(3) for n in names}
    for _ in range(runs):
        outs = session.run(names, random_inputs(session, rng, vocab))
        for name, out in zip(names, outs):
            x = np.asarray(out, dtype=np.float64)
            k = (x * x).mean()
            sums[name] += (x.mean(), k, k * k)
    result = {}
    for name, (s_mean, s_k, s_k2) in sums.items():
        mean_k = s_k / runs
        var = max(s_k2 / runs - mean_k**2, 0.0) / max(runs - 1, 1)
        result[name] = (s_mean / runs, mean_k, np.sqrt(var) / mean_k if mean_k > 0 else 0.0)
    return result


def compare_with_onnxruntime(path, runs: int = 48, inputs: dict | None = None):
    """Symbolic pass vs onnxruntime on every exactly-modeled value.

    Returns (checked, tight, failures): values compared under docs/theory.md's criterion
    |ln(K_sym/K_meas)| <= ln 1.15 + 3 SE (SE = predicted finite-width spread of this one network), and
    the values whose predicted spread is <= 5%, which must agree within 15% outright. SE also counts the
    measurement's own standard error over the runs (a single input's K fluctuates). Masked attention
    logits are skipped: by convention the pass excludes masked entries, the measurement includes the fill.
    """
    import math

    from initcheck.analysis.symbolic import run_symbolic
    from initcheck.frontends import load
    from initcheck.passes import fuse_pointwise

    graph = load(path, inputs)
    fuse_pointwise(graph)
    result = run_symbolic(graph)
    values = [v for v, m in result.forward.items() if not v.is_input and m.exact and m.valid_keys is None]
    measured = measure(path, [v.name for v in values], runs=runs, graph=graph)
    checked, tight, failures = 0, 0, []
    for v in values:
        predicted, (_, observed, noise) = result.forward[v], measured[v.name]
        if not np.isfinite(observed) or observed <= 0 or predicted.K <= 0:
            continue
        checked += 1
        error = abs(math.log(predicted.K / observed))
        if error > math.log(1.15) + 3 * math.sqrt(predicted.spread + noise**2):
            failures.append(
                f"{v.name}: predicted K {predicted.K:.4g}, measured {observed:.4g} (spread {predicted.spread:.3g})"
            )
        if predicted.spread <= 0.05**2:
            tight += 1
            if abs(predicted.K / observed - 1) > 0.15 + 3 * noise:
                failures.append(f"{v.name}: predicted K {predicted.K:.4g}, measured {observed:.4g}, not within 15%")
    return checked, tight, failures
