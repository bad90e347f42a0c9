"""Small ONNX graphs built in the tests (no exporter): what several tests need in slightly different forms."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper


def relu_mlp(weights: list[np.ndarray], biases: list[np.ndarray] | None = None, batch: int | str = 8):
    """x -> (x W_i [+ b_i] -> ReLU) per weight; initializers named w0, w1, ... and b0, b1, ...; `batch` a number or a
    symbolic dimension's name."""
    nodes, initializers, x = [], [], "x"
    for i, w in enumerate(weights):
        initializers.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]))
        x = f"m{i}"
        if biases is not None:
            initializers.append(numpy_helper.from_array(biases[i], f"b{i}"))
            nodes.append(helper.make_node("Add", [x, f"b{i}"], [f"a{i}"]))
            x = f"a{i}"
        nodes.append(helper.make_node("Relu", [x], [f"h{i}"]))
        x = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, weights[0].shape[0]])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, weights[-1].shape[1]])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def he_weights(count: int, width: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, (2 / width) ** 0.5, (width, width)).astype(np.float32) for _ in range(count)]
