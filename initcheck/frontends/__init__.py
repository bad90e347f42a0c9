"""Frontends translate a model into the graph IR. They compute weight statistics; they never analyse and never
run the model: besides the graph they hand back what the probe would execute (`Executable`), as plain data."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from initcheck.errors import ModelLoadError, UsageError
from initcheck.ir import Graph

# input specs: name -> shape, or name -> (shape, dtype)
InputSpecs = dict[str, tuple]


def shapes_only(specs: InputSpecs | None) -> dict[str, tuple[int, ...]]:
    return {name: (s[0] if s and isinstance(s[0], tuple) else s) for name, s in (specs or {}).items()}


def load(
    path: str | Path,
    inputs: InputSpecs | None = None,
    training: bool = False,
    *,
    arch: str | None = None,
    trust_pickle: bool = False,
) -> Graph:
    return load_model(path, inputs, training, arch=arch, trust_pickle=trust_pickle)[0]


@dataclass(frozen=True)
class Executable:
    """What the probe runs for a loaded model: exactly one of an ONNX file, the bytes of an ONNX model converted
    from TorchScript, or a torch.export program (its own copy of the weights, never the user's module)."""

    onnx_path: Path | None = None
    onnx_bytes: bytes | None = None
    program: Any = None


def load_model(
    path: str | Path,
    inputs: InputSpecs | None = None,
    training: bool = False,
    *,
    arch: str | None = None,
    trust_pickle: bool = False,
    stream: bool = False,
) -> tuple[Graph, Executable]:
    """The file's graph and what the probe would execute (stream: no probe will run, so a safetensors checkpoint
    with --arch is read one tensor at a time into a meta-device model; frontends.streamed). The format is decided by the content, not the name (a TorchScript zip
    shipped as `.jit` is TorchScript); the suffix only decides for files whose content says nothing."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, expected a model file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a regular file")
    from initcheck.frontends import streamed
    from initcheck.frontends.archives import sniff

    content = "safetensors index" if streamed.is_index(path) else sniff(path)
    if content == "safetensors index" and arch is None:
        raise UsageError(f"{path}: a safetensors index names weights only; pass --arch package.module:factory")
    if content in ("safetensors", "safetensors index") and arch is not None:
        return _load_safetensors(path, inputs or {}, training, arch, stream)
    if content in ("zip", "safetensors", "pickle"):
        return _load_torch(path, inputs or {}, training, arch, trust_pickle)
    if content == "onnx" or path.suffix.lower() == ".onnx":
        from initcheck.frontends.onnx_frontend import load_onnx

        return load_onnx(path, shapes_only(inputs), training, stream), Executable(onnx_path=path)
    raise ModelLoadError(
        f"{path}: not a model file initcheck reads (ONNX, .pt2, TorchScript, torch.save or "
        "safetensors state dicts with --arch)"
    )


def _load_torch(
    path: Path, inputs: InputSpecs, training: bool, arch: str | None, trust_pickle: bool
) -> tuple[Graph, Executable]:
    from initcheck.frontends import torch_load

    kind = torch_load.kind_of(path)
    if kind == "pt2":
        from initcheck.frontends.torch_frontend import from_exported_program

        program = torch_load.load_pt2(path, trust_pickle)
        torch_load.check_program_inputs(program, inputs, path)
        return from_exported_program(program, training, str(path)), Executable(program=program)
    if kind == "torchscript":
        from initcheck.frontends.onnx_frontend import load_onnx

        data = torch_load.torchscript_to_onnx(path, inputs)
        with tempfile.TemporaryDirectory() as folder:
            converted = Path(folder) / f"{path.stem}.onnx"
            converted.write_bytes(data)
            graph = load_onnx(converted, shapes_only(inputs), training)
        graph.source = str(path)
        return graph, Executable(onnx_bytes=data)
    checkpoint = torch_load.read_checkpoint(path, trust_pickle)
    if hasattr(checkpoint, "forward") and hasattr(checkpoint, "state_dict") and arch is None:
        module = checkpoint  # a whole nn.Module, unpickled because the user trusts the file
    else:
        if arch is None:
            raise UsageError(
                f"{path}: holds weights only (a state_dict); pass --arch package.module:factory to say "
                "which model they belong to"
            )
        module = _built_with_weights(arch, checkpoint, path)
    return module_graph(module, torch_load.example_inputs(module, inputs, path), training, str(path))


def _built_with_weights(arch: str, checkpoint, path: Path):
    """The --arch model with the checkpoint's matching tensors loaded (prefixes stripped, names checked)."""
    from initcheck.frontends import torch_load

    module = torch_load.build_module(arch)
    torch_load.load_weights(module, torch_load.find_state_dict(checkpoint, set(module.state_dict())), path)
    return module


def _load_safetensors(path: Path, inputs: InputSpecs, training: bool, arch: str, stream: bool):
    """A safetensors checkpoint (or shards and their index) for an --arch model: streamed into a meta-device build
    of the model when no probe will run, else loaded whole into a built one."""
    import torch

    from initcheck.frontends import meta_init, streamed, torch_load

    files = streamed.tensor_files(path)
    if not stream:
        module = _built_with_weights(arch, streamed.all_tensors(files), path)
        return module_graph(module, torch_load.example_inputs(module, inputs, path), training, str(path))
    with torch.device("meta"):
        module = torch_load.build_module(arch)
    expected = set(module.state_dict())
    names = torch_load.matched_names(files, expected)
    torch_load.check_names(expected, set(names), path)
    values = streamed.CheckpointValues(files, names, fallback=meta_init.InitOnDemand(module))
    args = torch_load.example_inputs(module, inputs, path)
    note = "weights read one tensor at a time from the checkpoint into a meta-device build of the model"
    return _meta_module_graph(module, args, training, str(path), None, values, note)


def _meta_module_graph(
    module, args: tuple, training: bool, source: str, kwargs: dict | None, values=None, note: str = ""
):
    """A model on the meta device: exported with meta inputs (shapes only), its weights read unit by unit from its
    own init (frontends.meta_init), or from `values`. Nothing to run: the probe is skipped, with a note."""
    import torch

    from initcheck.frontends import meta_init, torch_load
    from initcheck.frontends.torch_frontend import from_exported_program

    def to_meta(x):
        return x.to("meta") if isinstance(x, torch.Tensor) else x

    was_training, rng = module.training, torch.get_rng_state()
    try:
        module.train(training)
        program = torch_load.export_module(
            module, tuple(map(to_meta, args)), {k: to_meta(v) for k, v in (kwargs or {}).items()} or None
        )
        graph = from_exported_program(program, training, source, init=values or meta_init.InitOnDemand(module))
    finally:
        module.train(was_training)
        torch.set_rng_state(rng)
    graph.notes.append(
        note
        or "the model is on the meta device: its weights' statistics come from its own init, one block at a time; "
        "there is nothing to run, so no probe"
    )
    return graph, None


def module_graph(
    module, args: tuple, training: bool, source: str, kwargs: dict | None = None
) -> tuple[Graph, Executable]:
    """Export a live module (restoring its mode, buffers and RNG afterwards) and translate it. The probe runs
    on the exported program's own copy of the module, never on the user's."""
    import torch

    from initcheck.frontends import meta_init, torch_load
    from initcheck.frontends.torch_frontend import from_exported_program

    if meta_init.on_meta(module):
        return _meta_module_graph(module, args, training, source, kwargs)
    was_training = module.training
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    rng = torch.get_rng_state()
    try:
        module.train(training)
        program = torch_load.export_module(module, args, kwargs)
        module.train(was_training)
        return from_exported_program(program, training, source), Executable(program=program)
    finally:
        module.train(was_training)
        with torch.no_grad():
            for name, b in module.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
        torch.set_rng_state(rng)
