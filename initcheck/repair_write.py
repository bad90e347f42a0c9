"""The repaired model, written in the input's own form: an ONNX file with its initializers rescaled and its graph
unchanged, an exported program (.pt2) with its state rescaled, or a copy of a live module. The input is never
written: an output that is the input, or a form this cannot write, is refused in one line."""

from __future__ import annotations

import copy
import os
from pathlib import Path

from initcheck.errors import UsageError

WRITABLE = (".onnx", ".pt2")
_PROTOBUF_LIMIT = 2**31 - 2**20  # a model this large keeps its tensors in an external data file


def check_output(source: Path, output: Path) -> None:
    suffix = source.suffix.lower()
    if suffix not in WRITABLE:
        raise UsageError(
            f"{source}: fix writes ONNX and .pt2 files and live modules (initcheck.fix); for a checkpoint, apply the "
            "printed init code in your model's source (--dry-run prints it)"
        )
    if output.suffix.lower() != suffix:
        raise UsageError(f"-o {output}: the repaired model keeps the input's form; give a {suffix} path")
    if output.exists() and output.resolve() == source.resolve():
        raise UsageError(f"-o {output}: that is the input; initcheck never writes its input, choose another path")


def write_model(source: Path, output: Path, scales: dict[str, float], trust_pickle: bool = False) -> None:
    check_output(source, output)
    if source.suffix.lower() == ".onnx":
        _write_onnx(source, output, scales)
    else:
        _write_pt2(source, output, scales, trust_pickle)


def _write_onnx(source: Path, output: Path, scales: dict[str, float]) -> None:
    import onnx
    from onnx import numpy_helper

    from initcheck.frontends.onnx_load import read_model

    model = read_model(source, as_stored=True)
    initializers = {t.name: t for t in model.graph.initializer}
    for name, factor in scales.items():
        if name not in initializers:
            raise UsageError(f"{source}: no initializer '{name}' to rescale")
        tensor = initializers[name]
        array = numpy_helper.to_array(tensor)
        tensor.CopyFrom(numpy_helper.from_array((array * factor).astype(array.dtype), name))
    temporary = output.with_name(f".{output.name}.tmp")
    if model.ByteSize() > _PROTOBUF_LIMIT:
        onnx.save(model, str(temporary), save_as_external_data=True, location=f"{output.name}.data")
    else:
        onnx.save(model, str(temporary))
    os.replace(temporary, output)


def _write_pt2(source: Path, output: Path, scales: dict[str, float], trust_pickle: bool) -> None:
    import torch

    from initcheck.frontends.torch_load import load_pt2

    program = load_pt2(source, trust_pickle)
    with torch.no_grad():
        for name, factor in scales.items():
            if name not in program.state_dict:
                raise UsageError(f"{source}: no parameter '{name}' to rescale")
            program.state_dict[name].mul_(factor)
    temporary = output.with_name(f".{output.name}.tmp")
    torch.export.save(program, str(temporary))
    os.replace(temporary, output)


def rescaled_module(module, scales: dict[str, float], inplace: bool = False):
    """The module with its parameters rescaled: a deep copy unless `inplace`."""
    import torch

    target = module if inplace else copy.deepcopy(module)
    with torch.no_grad():
        for name, factor in scales.items():
            target.get_parameter(name).mul_(factor)
    return target
