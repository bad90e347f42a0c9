"""Loading PyTorch files safely into an ExportedProgram, then the IR.

- .pt2 (torch.export.save): loaded as is.
- TorchScript archives: TorchScript code runs in torch's own interpreter, not Python; analysed through
  the ONNX exporter (which accepts ScriptModules), needs --input shapes.
- state dicts (.pt/.pth/.bin/.safetensors): need --arch module:factory; loaded with weights_only=True;
  nested training checkpoints and DDP/compile prefixes are recognised.
- full pickles: refused unless trust_pickle (unpickling runs code).
"""

from __future__ import annotations

import importlib
import inspect
import io
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from initcheck.errors import ModelLoadError, UsageError
from initcheck.frontends import archives
from initcheck.frontends.output_containers import stand_ins_for_unknown_containers
from initcheck.frontends.untrusted import CodeFromFileRefused, no_code_from_files, quiet_third_party
from initcheck.limits import check_shape

_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "ema", "model_ema", "weights")
_PREFIXES = ("module.", "_orig_mod.", "model.")


def kind_of(path: Path) -> str:
    """'pt2', 'torchscript', 'torch.save' (a zip state dict or pickle), 'safetensors' or 'pickle' (legacy torch.save),
    by content; every zip member's declared size checked before anything is inflated."""
    content = archives.sniff(path)
    if content == "zip":
        archive = archives.open_archive(path)
        kind = archives.archive_kind(path, archive)
        if kind == "pt2":
            archives.check_pt2(path, archive)
        archives.check_pickled_storages(path, archive)
        return kind
    if content == "safetensors":
        archives.check_safetensors(path)
    return content


def _torch():
    try:
        import torch
    except ImportError:
        raise UsageError("PyTorch files need torch: pip install 'initcheck[torch]'") from None
    return torch


def export_error(e: Exception) -> ModelLoadError:
    """One line for a model torch.export cannot trace: the exact advice where we know it, else torch's first
    sentence (URLs and the rest of its explanation dropped, never cut mid-way) and the ONNX route."""
    text = str(e)
    if "Cache" in text and "in output" in text:  # Hugging Face models return their key/value cache by default
        return ModelLoadError(
            "torch.export failed: the model returns its key/value cache (a transformers Cache "
            "object); call it with use_cache=False (or set model.config.use_cache = False) and "
            "analyse again"
        )
    first = next((line for line in text.splitlines() if line.strip()), type(e).__name__)
    first = re.split(r"(?<=[.!?])\s|\s*\(?(?:see )?https?://", first, maxsplit=1, flags=re.IGNORECASE)[0].rstrip(" .:(")
    return ModelLoadError(
        f"torch.export failed: {type(e).__name__}: {first[:200]}. Export the model to ONNX "
        "(torch.onnx.export) and analyse the .onnx file instead"
    )


def _first_line(e: Exception) -> str:
    text = str(e).replace("Please check the warnings above for possible errors.", "")  # we keep them off the terminal
    if "error when deserializing" in text:
        return "the archive is damaged or was written by an incompatible torch version"
    return f"{type(e).__name__}: {text.splitlines()[0].strip()[:160]}" if text.strip() else type(e).__name__


def load_pt2(path: Path, trust_pickle: bool = False):
    """The exported program, loaded with no code from the file: torch's loader is guarded, and afterwards the graph
    may only call operators (never a Python function named by the file) nor run the file's guard code."""
    torch = _torch()
    try:
        with quiet_third_party(), no_code_from_files(str(path), trust_pickle), stand_ins_for_unknown_containers():
            program = torch.export.load(str(path))
    except CodeFromFileRefused:
        raise
    except Exception as e:  # corrupt or incompatible archive
        raise ModelLoadError(f"{path}: cannot load the exported program ({_first_line(e)})") from None
    if not trust_pickle:
        check_program(program, path)
    return program


def check_program(program, path: Path) -> None:
    """Refuse a program that could run Python named by the file when executed: call targets other than operators
    and a few pure arithmetic functions, attribute paths that are not identifiers. Its guard code (Python source
    that torch would exec when the module is built) is dropped: the probe builds inputs from the program's shapes."""
    allowed = _pure_python_callables()
    import torch

    operator_types = (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in graph.nodes if graph is not None else []:
            bad = None
            if node.op == "call_function" and not (isinstance(node.target, operator_types) or node.target in allowed):
                bad = f"calls {getattr(node.target, '__qualname__', None) or node.target!s:.80}"
            elif node.op == "get_attr" and not all(p.isidentifier() for p in str(node.target).split(".")):
                bad = f"reads an attribute named '{str(node.target)[:60]}'"
            elif node.op not in ("placeholder", "output", "call_function", "get_attr"):
                bad = f"has a '{node.op}' node"
            if bad:
                raise CodeFromFileRefused(
                    f"{path}: refused: its graph {bad}, which is not an operator; that would run "
                    "Python named by the file. Pass --trust-pickle only if you trust its source"
                )
    program._guards_code = []


def _pure_python_callables() -> set:
    import math
    import operator

    import torch

    names = (
        "getitem",
        "add",
        "sub",
        "mul",
        "truediv",
        "floordiv",
        "mod",
        "pow",
        "neg",
        "pos",
        "abs",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "and_",
        "or_",
        "xor",
        "not_",
        "invert",
        "lshift",
        "rshift",
        "matmul",
        "truth",
    )
    found = {getattr(operator, n) for n in names}
    found |= {v for k, v in vars(math).items() if callable(v) and not k.startswith("_")}
    found |= {getattr(torch, n) for n in dir(torch) if n.startswith(("sym_", "_sym_")) and callable(getattr(torch, n))}
    found |= {torch._assert, torch._check, getattr(torch, "_check_is_size", torch._check)}
    return found


def read_checkpoint(path: Path, trust_pickle: bool):
    """The object in a torch.save / safetensors file, loaded without running code unless trusted."""
    torch = _torch()
    if archives.sniff(path) == "safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UsageError("reading .safetensors needs the safetensors package: pip install safetensors") from None
        try:
            return load_file(str(path))
        except Exception as e:  # header or data corrupt
            raise ModelLoadError(f"{path}: not a valid safetensors file ({type(e).__name__})") from None
    try:
        with quiet_third_party(), no_code_from_files(str(path), trust_pickle):
            return torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except CodeFromFileRefused:
        raise ModelLoadError(
            f"{path}: contains pickled Python objects (e.g. a whole nn.Module); unpickling runs code from the "
            "file, so it is refused. Pass --trust-pickle if you trust its source, or save a state_dict"
        ) from None
    except Exception as e:
        raise ModelLoadError(f"{path}: not a readable PyTorch file ({_first_line(e)})") from None


def find_state_dict(obj, expected: set[str]) -> dict:
    """The tensor dict inside a checkpoint that best matches the model's keys, prefixes stripped."""
    torch = _torch()
    candidates = []

    def visit(o, depth=0):
        if isinstance(o, dict) and depth < 3:
            tensors = {k: v for k, v in o.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
            if tensors:
                candidates.append(tensors)
            for key in _NESTED_KEYS:
                if key in o:
                    visit(o[key] if not hasattr(o[key], "state_dict") else o[key].state_dict(), depth + 1)

    visit(obj if not hasattr(obj, "state_dict") else obj.state_dict())
    best, best_score = {}, -1
    for tensors in candidates:
        names = matched_names(tensors, expected)
        score = len(expected & set(names))
        if score > best_score:
            best, best_score = {name: tensors[key] for name, key in names.items()}, score
    return best


def matched_names(keys, expected: set[str]) -> dict[str, str]:
    """Model name -> checkpoint key, with the prefix (DDP's `module.`, torch.compile's `_orig_mod.`, ...) that
    matches most of the model's names stripped."""
    best: dict[str, str] = {}
    for prefix in ("",) + _PREFIXES:
        names = {k[len(prefix) :] if k.startswith(prefix) else k: k for k in keys}
        if len(expected & set(names)) > len(expected & set(best)):
            best = names
    return best or {k: k for k in keys}


def resolve_factory(spec: str):
    """'package.module:factory' -> the callable (like uvicorn's module:attr); imports user code on request."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--arch '{spec}': expected package.module:factory")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # the user's module failed to import
        raise UsageError(f"--arch '{spec}': cannot import '{module_name}' ({type(e).__name__}: {e})") from None
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise UsageError(f"--arch '{spec}': '{module_name}' has no attribute '{attr}'")
        target = getattr(target, part)
    return target


def build_module(spec: str):
    torch = _torch()
    factory = resolve_factory(spec)
    try:
        module = factory() if not isinstance(factory, torch.nn.Module) else factory
    except Exception as e:  # the factory raised
        raise ModelLoadError(
            f"--arch '{spec}': the factory raised {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        ) from None
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"--arch '{spec}': the factory returned {type(module).__name__}, not an nn.Module")
    return module


def load_weights(module, state: dict, path: Path) -> None:
    check_names(set(module.state_dict()), set(state), path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(
            f"{path}: weights do not fit the --arch model ({str(e).splitlines()[-1].strip()[:200]})"
        ) from None


def check_names(expected: set[str], present: set[str], path: Path) -> None:
    """Refuse a checkpoint whose names are not the model's, listing the missing and unexpected ones."""
    missing = sorted(expected - present)
    unexpected = sorted(present - expected)
    if missing or unexpected:

        def show(keys):
            return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")

        parts = ([f"missing {len(missing)} key(s): {show(missing)}"] if missing else []) + (
            [f"unexpected {len(unexpected)} key(s): {show(unexpected)}"] if unexpected else []
        )
        raise ModelLoadError(f"{path}: weights do not match the --arch model: " + "; ".join(parts))


def forward_names(module) -> list[str]:
    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return []
    return [n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def vocabulary(module) -> int:
    torch = _torch()
    sizes = [m.num_embeddings for m in module.modules() if isinstance(m, torch.nn.Embedding)]
    return min(sizes) if sizes else 2


def example_inputs(module, specs: dict[str, tuple], path: Path | str = "model") -> tuple:
    """Random example inputs from --input NAME=SHAPE[:dtype]: floats N(0,1), masks ones, ids uniform."""
    torch = _torch()
    names = forward_names(module)
    if not specs:
        raise UsageError(
            f"{path}: pass the example input shapes with --input NAME=SHAPE "
            f"(forward takes: {', '.join(names) or 'positional tensors'})"
        )
    unknown = [n for n in specs if names and n not in names]
    if unknown:
        raise UsageError(
            f"--input {unknown[0]}: forward() has no parameter '{unknown[0]}' (it takes: {', '.join(names)})"
        )
    ordered = [n for n in names if n in specs] if names else list(specs)
    args = []
    generator = torch.Generator().manual_seed(0)
    for name in ordered:
        shape, dtype = specs[name] if isinstance(specs[name][0], tuple) else (specs[name], None)
        check_shape(f"--input {name}", shape)
        dtype = dtype or ("int64" if name.endswith(("ids", "mask")) else "float32")
        torch_dtype = getattr(torch, dtype, None)
        if torch_dtype is None:
            raise UsageError(f"--input {name}: unknown dtype '{dtype}'")
        if "mask" in name:
            args.append(torch.ones(shape, dtype=torch_dtype))
        elif torch_dtype.is_floating_point:
            args.append(torch.randn(shape, generator=generator).to(torch_dtype))
        else:
            args.append(torch.randint(0, vocabulary(module), shape, generator=generator).to(torch_dtype))
    return tuple(args)


def export_module(module, args: tuple, kwargs: dict | None = None):
    torch = _torch()
    try:
        with quiet_third_party(), _without_cache(module, kwargs):
            return torch.export.export(module, args, kwargs=kwargs or {}, strict=False)
    except Exception as e:  # torch.export cannot trace this model
        raise export_error(e) from None


@contextmanager
def _without_cache(module, kwargs: dict | None):
    """A transformers model returns its key/value cache by default (config.use_cache), which torch.export cannot
    put in a graph and an initialisation check does not need: off while exporting, unless the caller passed
    use_cache; the config is restored after."""
    config = getattr(module, "config", None)
    if config is None or getattr(config, "use_cache", None) is not True or "use_cache" in (kwargs or {}):
        yield
        return
    config.use_cache = False
    try:
        yield
    finally:
        config.use_cache = True


def torchscript_to_onnx(path: Path, specs: dict):
    """TorchScript archive -> ONNX bytes via torch's exporter (TorchScript is not Python: loading is safe)."""
    torch = _torch()
    try:
        with quiet_third_party(), no_code_from_files(str(path)):
            module = torch.jit.load(str(path), map_location="cpu")
    except CodeFromFileRefused:
        raise
    except Exception as e:  # corrupt archive
        raise ModelLoadError(f"{path}: cannot load the TorchScript archive ({type(e).__name__})") from None
    names = [i.debugName().split(".")[0] for i in list(module.graph.inputs())[1:]]
    if not specs:
        raise UsageError(f"{path}: TorchScript stores no input shapes; pass --input NAME=SHAPE for: {', '.join(names)}")
    unknown = [n for n in specs if n not in names]
    if unknown:
        raise UsageError(f"--input {unknown[0]}: {path} has no input named '{unknown[0]}' (inputs: {', '.join(names)})")
    args = example_inputs(module, specs, path)
    buffer = io.BytesIO()
    try:
        with quiet_third_party(), no_code_from_files(str(path)):  # the module's TorchScript code runs here
            torch.onnx.export(
                module, args, buffer, dynamo=False, opset_version=17, input_names=[n for n in names if n in specs]
            )
    except CodeFromFileRefused:
        raise
    except Exception as e:  # the exporter rejected an op
        raise ModelLoadError(
            f"{path}: cannot convert the TorchScript module ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        ) from None
    return buffer.getvalue()


def check_program_inputs(program, specs: dict, path: Path) -> None:
    """--input on a .pt2 must name one of the program's inputs and agree with the shape it was exported at: the
    program is analysed at that shape, so anything else would be silently ignored."""
    if not specs:
        return
    shapes = {}
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in set(program.graph_signature.user_inputs):
            value = node.meta.get("val")
            shapes[node.name] = tuple(int(d) for d in value.shape) if hasattr(value, "shape") else None
    for name, spec in specs.items():
        shape = spec[0] if spec and isinstance(spec[0], tuple) else spec
        if name not in shapes:
            raise UsageError(
                f"--input {name}: {path} has no input named '{name}' (inputs: {', '.join(shapes) or 'none'})"
            )
        exported = shapes[name]
        if exported is not None and tuple(shape) != exported:
            raise UsageError(
                f"--input {name}={'x'.join(map(str, shape))}: {path} was exported with {name} of shape "
                f"{'x'.join(map(str, exported)) or 'scalar'} and is analysed at that shape; export it "
                "again with the shape you want"
            )
