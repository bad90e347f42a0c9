"""Seeded, bounded generators of hostile model files: truncations, bit flips and field mutations of ONNX
protobufs, and damaged torch archives (zip-based .pt2 / TorchScript / state dicts). Deterministic per seed."""

from __future__ import annotations

import io
import random
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(0, max(len(data), 1))]


def flip_bits(data: bytes, rng: random.Random, flips: int | None = None) -> bytes:
    out = bytearray(data)
    for _ in range(flips or rng.randint(1, 64)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _tensor_mutation(model: onnx.ModelProto, rng: random.Random) -> str:
    inits = list(model.graph.initializer)
    if not inits:
        return "none"
    t = rng.choice(inits)
    choice = rng.randrange(9)
    if choice == 0:
        t.dims[rng.randrange(len(t.dims))] = rng.choice([0, -1, 2**31, 10**12]) if t.dims else 0
    elif choice == 1:
        t.data_type = rng.choice([0, 3, 8, 16, 17, 99])
    elif choice == 2:
        t.raw_data = t.raw_data[: len(t.raw_data) // 2]
    elif choice == 3:
        arr = numpy_helper.to_array(t).astype(np.float32)
        arr.flat[rng.randrange(arr.size)] = rng.choice([np.nan, np.inf, -np.inf, 1e-42, 3e38])
        t.CopyFrom(numpy_helper.from_array(arr, t.name))
    elif choice == 4:
        arr = numpy_helper.to_array(t)
        t.CopyFrom(numpy_helper.from_array(arr.astype(rng.choice([np.float16, np.float64, np.int8])), t.name))
    elif choice == 5:
        del t.dims[:]
    elif choice == 6:
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value=rng.choice(["../../etc/passwd", "/etc/passwd", "missing.bin", ""]))
    elif choice == 7:
        t.dims.extend([rng.randint(2, 5)])
    else:
        t.name = rng.choice(["", t.name + "_renamed"])
    return f"tensor:{choice}"


def _graph_mutation(model: onnx.ModelProto, rng: random.Random) -> str:
    g = model.graph
    nodes = list(g.node)
    choice = rng.randrange(10)
    node = rng.choice(nodes) if nodes else None
    if choice == 0 and node is not None:
        node.op_type = rng.choice(["Conv", "MatMul", "NoSuchOp", "Softmax", "Loop", "QLinearConv", ""])
    elif choice == 1 and node is not None and node.input:
        node.input[rng.randrange(len(node.input))] = rng.choice(
            ["", "dangling", node.output[0] if node.output else "x"]
        )
    elif choice == 2 and node is not None and node.attribute:
        del node.attribute[rng.randrange(len(node.attribute))]
    elif choice == 3 and node is not None:
        node.attribute.append(
            helper.make_attribute(
                rng.choice(["axis", "strides", "kernel_shape", "group", "pads"]),
                rng.choice([-7, 0, 10**9, [0, 0], [1, 2, 3, 4, 5, 6, 7, 8]]),
            )
        )
    elif choice == 4 and g.input:
        dims = g.input[0].type.tensor_type.shape.dim
        if dims:
            dims[rng.randrange(len(dims))].dim_value = rng.choice([0, 1, 10**9, 2**40])
    elif choice == 5:
        model.opset_import[0].version = rng.choice([1, 6, 99, 0])
    elif choice == 6 and nodes:
        g.node.remove(rng.choice(nodes))
    elif choice == 7 and nodes:
        rng.shuffle(nodes)
        del g.node[:]
        g.node.extend(nodes)
    elif choice == 8 and node is not None:
        node.domain = rng.choice(["com.microsoft", "custom", "ai.onnx.ml"])
    elif choice == 9 and g.output:
        g.output[0].name = "not_produced"
    return f"graph:{choice}"


def mutate_onnx(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One hostile variant of an ONNX file and a label saying what was done."""
    kind = rng.randrange(4)
    if kind == 0:
        return truncate(data, rng), "truncate"
    if kind == 1:
        return flip_bits(data, rng), "flip"
    model = onnx.load_from_string(data)
    label = _tensor_mutation(model, rng) if kind == 2 else _graph_mutation(model, rng)
    return model.SerializeToString(), label


def mutate_zip(data: bytes, rng: random.Random, marker: str) -> tuple[bytes, str]:
    """Damage a zip-based torch archive: truncate, flip bits, drop or corrupt a member, or plant a pickle that
    would create `marker` if anything unpickled it unsafely."""
    kind = rng.randrange(5)
    if kind == 0:
        return truncate(data, rng), "truncate"
    if kind == 1:
        return flip_bits(data, rng, rng.randint(1, 16)), "flip"
    source = zipfile.ZipFile(io.BytesIO(data))
    names = source.namelist()
    victim = rng.choice(names)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name in names:
            content = source.read(name)
            if name == victim and kind == 2:
                continue  # member dropped
            if name == victim and kind == 3:
                content = flip_bits(content, rng, 8) if content else b"\x00"
            if kind == 4 and name.endswith(".pkl"):
                content = evil_pickle(marker)
            target.writestr(name, content)
    return out.getvalue(), f"zip:{kind}"


def evil_pickle(marker: str) -> bytes:
    """A protocol-0 pickle calling os.system: it runs only if something unpickles it without restrictions."""
    return f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
