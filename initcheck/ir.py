"""The graph IR every frontend produces and every pass consumes.

Nodes carry a canonical op name, plain-Python attributes, a module scope and the statistics of their
weights (never a framework object or a tensor): frontends translate, rules compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from initcheck.stats import TensorStats


@dataclass(eq=False)
class Value:
    """A tensor in the graph: its shape (ints, or None where unknown), dtype and where it comes from."""

    name: str
    shape: tuple[int | None, ...] | None = None
    dtype: str = "float32"
    producer: Node | None = None
    consumers: list[Node] = field(default_factory=list)
    const: TensorStats | None = None  # set for initializers and folded constants
    array: np.ndarray | None = None  # kept only for small constants (shapes, scalars, masks)
    is_input: bool = False
    is_output: bool = False
    is_weight: bool = False  # stored in the file (initializer / state dict), not computed or folded

    @property
    def is_float(self) -> bool:
        return self.dtype in ("float16", "bfloat16", "float32", "float64")

    @property
    def numel(self) -> int | None:
        if self.shape is None or any(d is None for d in self.shape):
            return None
        return int(np.prod([int(d) for d in self.shape if d is not None], dtype=np.int64))


# ops whose weight one stored tensor holds (Node.attrs["weight_tensor"] and "bias_tensor" name them where the
# frontend knows them; a normalisation's scale is "scale_tensor")
WEIGHTED = ("linear", "conv", "conv_transpose", "embedding")
NORMALIZATIONS = frozenset({"batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm"})


@dataclass(eq=False)
class Node:
    """One operation. `op` is canonical (`linear`, `conv`, `relu`, ...); `source_op` is the original name."""

    name: str
    op: str
    source_op: str
    inputs: list[Value | None]
    outputs: list[Value]
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # weight statistics prepared by the frontend
    scope: str = ""

    @property
    def label(self) -> str:
        return self.scope or self.name

    def input(self, index: int = 0) -> Value:
        """An input the op requires (a data input, never an omitted optional one)."""
        value = self.inputs[index]
        if value is None:
            raise ValueError(f"node {self.name} ({self.op}): required input {index} is missing")
        return value


@dataclass
class Graph:
    """Nodes in topological order, the model's inputs and outputs, and every value by name."""

    nodes: list[Node]
    inputs: list[Value]
    outputs: list[Value]
    values: dict[str, Value]
    source: str = ""
    producer_name: str = ""
    opset: int | None = None
    notes: list[str] = field(default_factory=list)  # non-fatal remarks from loading (shown in the report)
    folded_normalization: bool = False  # an eval-mode export folded batch norms into the convs (not in the file)

    def rewire(self) -> None:
        """Recompute producer/consumer links after nodes were replaced or removed."""
        for value in self.values.values():
            value.producer = None
            value.consumers = []
        for node in self.nodes:
            for consumed in node.inputs:
                if consumed is not None:
                    consumed.consumers.append(node)
            for output in node.outputs:
                output.producer = node
