"""Export a 1-3 op torch module to ONNX, run the symbolic pass, and measure the same moments by
Monte Carlo in float64 torch with the same weights."""

from __future__ import annotations

import copy
import logging
import math
import warnings

import torch

from initcheck.analysis.symbolic import run_symbolic
from initcheck.frontends import load
from initcheck.passes import fuse_pointwise


def export(module: torch.nn.Module, example: torch.Tensor, path, train: bool = False) -> None:
    module = copy.deepcopy(module).float().train(train)
    mode = torch.onnx.TrainingMode.TRAINING if train else torch.onnx.TrainingMode.EVAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            torch.onnx.export(
                module,
                (example,),
                str(path),
                dynamo=False,
                opset_version=17,
                training=mode,
                do_constant_folding=not train,
                input_names=["x"],
                output_names=["y"],
            )
        finally:
            logging.disable(logging.NOTSET)


def predict(module, example, path, train: bool = False):
    """(forward Moments at the output, backward G at the input) from the symbolic pass."""
    export(module, example, path, train)
    graph = load(path, training=train)
    fuse_pointwise(graph)
    result = run_symbolic(graph)
    return result.forward[graph.outputs[0]], result.backward.get(graph.inputs[0]), result


def monte_carlo(module, sample, batches: int = 20, train: bool = False, seed: int = 1_000_003):
    """(mean, K of the output, G at the input) with a unit-variance random cotangent at the output.
    The seed must differ from the ones used to initialise weights, or inputs replay the weight stream."""
    torch.manual_seed(seed)
    model = copy.deepcopy(module).double().train(train)
    mean = K = G = 0.0
    for _ in range(batches):
        x = sample()
        floating = x.is_floating_point()
        if floating:
            x = x.double().requires_grad_()
        y = model(x)
        cotangent = torch.randn_like(y)
        (y * cotangent).sum().backward()
        mean += float(y.mean())
        K += float(y.pow(2).mean())
        G += float(x.grad.pow(2).mean()) if floating else 0.0
    return mean / batches, K / batches, G / batches


def relative_error(predicted: float, measured: float) -> float:
    return abs(predicted / measured - 1)


def agrees(predicted: float, measured: float, tolerance: float, spread: float = 0.0) -> bool:
    """docs/theory.md §13: |ln(sym/measured)| <= ln(1 + tolerance) + 3 SE, SE = the predicted finite-width
    spread of this one network (0 for a single layer on independent inputs)."""
    return abs(math.log(predicted / measured)) <= math.log1p(tolerance) + 3 * math.sqrt(spread)
