"""The repaired model, written in the input's own form: an ONNX file with its initializers rescaled and its graph
unchanged, an exported program (.pt2) with its state rescaled, or a copy of a live module. The input is never
written: an output that is the input, or a form this cannot write, is refused in one line."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
from pathlib import Path

import numpy as np

from initcheck.errors import UsageError
from initcheck.report.model import Edit
from initcheck.report.outputs import check_writable

WRITABLE = (".onnx", ".pt2", ".safetensors", ".pt", ".pth", ".bin")
_PROTOBUF_LIMIT = 2**31 - 2**20  # a model this large keeps its tensors in an external data file


def check_output(source: Path, output: Path) -> None:
    suffix = source.suffix.lower()
    if suffix not in WRITABLE or source.name.endswith(".index.json"):
        raise UsageError(
            f"{source}: fix writes ONNX, .pt2, single-file checkpoints (.safetensors, .pt, .pth, .bin) and live "
            "modules (initcheck.fix); for sharded checkpoints, apply the printed init code (--dry-run prints it)"
        )
    if output.suffix.lower() != suffix:
        raise UsageError(f"-o {output}: the repaired model keeps the input's form; give a {suffix} path")
    if output.exists() and output.resolve() == source.resolve():
        raise UsageError(f"-o {output}: that is the input; initcheck never writes its input, choose another path")
    check_writable(str(output), "-o")


@contextlib.contextmanager
def _replacing(output: Path):
    """A temporary path beside `output`, renamed onto it when the writing succeeded and removed when it did not:
    readers never see half a model, and a failed write leaves nothing behind."""
    temporary = output.with_name(f".{output.name}.tmp")
    try:
        yield temporary
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)


def write_model(source: Path, output: Path, edits: list[Edit], trust_pickle: bool = False) -> None:
    check_output(source, output)
    _write(source, output, edits, trust_pickle)


def rewrite(path: Path, edits: list[Edit], trust_pickle: bool = False) -> None:
    """More edits on a repaired model fix wrote itself (a second round)."""
    _write(path, path, edits, trust_pickle)


def _write(source: Path, output: Path, edits: list[Edit], trust_pickle: bool) -> None:
    suffix = source.suffix.lower()
    if suffix == ".onnx":
        _write_onnx(source, output, edits)
    elif suffix == ".pt2":
        _write_pt2(source, output, edits, trust_pickle)
    else:
        _write_checkpoint(source, output, edits, trust_pickle)


def edited(array: np.ndarray, edit: Edit) -> np.ndarray:
    """The array after the edit, in its own dtype (a redraw is seeded by the tensor's name: the same file twice
    gives the same repaired model)."""
    if edit.how == "fill":
        out = np.full_like(array, edit.value or 0.0)
    elif edit.how == "center":
        out = array - array.mean(dtype=np.float64)
    elif edit.how == "normal":
        out = _rng(edit).normal(0.0, edit.value or 0.0, array.shape)
    elif edit.how in ("icnr", "icnr_dcr"):
        phases = int(edit.value or 1) ** 2
        kernel = _rng(edit).normal(0.0, float(array.std()), (array.shape[0] // phases, *array.shape[1:]))
        if edit.how == "icnr":  # channel c r^2 + phase
            out = np.repeat(kernel, phases, axis=0)
        else:  # DepthToSpace DCR: channel phase C + c
            out = np.tile(kernel, (phases,) + (1,) * (kernel.ndim - 1))
    else:
        out = array * edit.factor
    return np.asarray(out).astype(array.dtype)


def _rng(edit: Edit) -> np.random.Generator:
    seed = int.from_bytes(hashlib.sha256((edit.tensor or "").encode()).digest()[:8], "little")
    return np.random.default_rng(seed)


def _write_onnx(source: Path, output: Path, edits: list[Edit]) -> None:
    import onnx
    from onnx import numpy_helper

    from initcheck.frontends.onnx_load import read_model

    model = read_model(source, as_stored=True)
    initializers = {t.name: t for t in model.graph.initializer}
    for edit in edits:
        if edit.tensor not in initializers:
            raise UsageError(f"{source}: no initializer '{edit.tensor}' to change")
        tensor = initializers[edit.tensor]
        tensor.CopyFrom(numpy_helper.from_array(edited(numpy_helper.to_array(tensor), edit), tensor.name))
    with _replacing(output) as temporary:
        if model.ByteSize() > _PROTOBUF_LIMIT:
            onnx.save(model, str(temporary), save_as_external_data=True, location=f"{output.name}.data")
        else:
            onnx.save(model, str(temporary))


def _write_pt2(source: Path, output: Path, edits: list[Edit], trust_pickle: bool) -> None:
    import torch

    from initcheck.frontends.torch_load import load_pt2

    program = load_pt2(source, trust_pickle)
    for edit in edits:
        if edit.tensor not in program.state_dict:
            raise UsageError(f"{source}: no parameter '{edit.tensor}' to change")
        _edit_tensor(program.state_dict[edit.tensor], edit)
    with _replacing(output) as temporary:
        torch.export.save(program, str(temporary))


def _write_checkpoint(source: Path, output: Path, edits: list[Edit], trust_pickle: bool) -> None:
    """A state dict (or a checkpoint holding one: optimizer state and the rest kept as they are), in its own
    format: safetensors stays safetensors, torch.save stays torch.save. Names are the --arch model's; the file's
    prefix (DDP's `module.`, ...) is kept."""
    import torch

    from initcheck.frontends import archives, torch_load

    if torch_load.kind_of(source) == "torchscript":
        raise UsageError(f"{source}: a TorchScript file; fix writes state dicts, .pt2 and ONNX")
    checkpoint = torch_load.read_checkpoint(source, trust_pickle)
    state = torch_load.find_state_dict(checkpoint, {e.tensor for e in edits if e.tensor})
    for edit in edits:
        if edit.tensor not in state:
            raise UsageError(f"{source}: no tensor '{edit.tensor}' to change")
        _edit_tensor(state[edit.tensor], edit)
    with _replacing(output) as temporary:
        if archives.sniff(source) == "safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in checkpoint.items()}, str(temporary))
        else:
            torch.save(checkpoint, str(temporary))


def _edit_tensor(tensor, edit: Edit) -> None:
    import torch

    array = tensor.detach().cpu().float().numpy()
    with torch.no_grad():
        tensor.copy_(torch.from_numpy(edited(array, edit)).to(tensor.dtype))


def edited_module(module, edits: list[Edit], inplace: bool = False):
    """The module with its parameters edited: a deep copy unless `inplace`."""
    target = module if inplace else copy.deepcopy(module)
    for edit in edits:
        _edit_tensor(target.get_parameter(edit.tensor), edit)
    return target
