"""A corpus of hostile model files of every supported format, built from one small conv net: planted pickles that
would create a marker file if anything unpickled or executed them, compression bombs, members and external data
whose declared lengths lie, and graphs that name Python code. Each case says what initcheck must do with it."""

from __future__ import annotations

import json
import struct
import textwrap
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from fuzz import evil_pickle
from onnx import TensorProto, helper

FACTORY = textwrap.dedent("""
    import torch
    from torch import nn

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.head = nn.Linear(8 * 8 * 8, 10)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).flatten(1))

    def make():
        torch.manual_seed(0)
        return Small().eval()
""")
BOMB_BYTES = 1 << 30  # inflated size of each bomb: 1 GiB of zeros in ~5 MB
SHAPE_ARGS = ["--input", "x=1x3x8x8"]
EITHER = "*"  # a planted member that the loader never reads: analysed (exit 0/1) or refused, never run


@dataclass
class Case:
    name: str
    path: Path
    args: list[str] = field(default_factory=list)
    refused: str | None = None  # a phrase of the one error line; None: the file analyses (exit 0/1); EITHER


def base_files(folder: Path) -> dict[str, Path]:
    """The healthy .pt2, TorchScript archive, zip and legacy state dicts, safetensors and ONNX of the small net,
    with its factory module `smallnet` in `folder` (for --arch smallnet:make)."""
    import sys

    import torch
    from safetensors.torch import save_file

    (folder / "smallnet.py").write_text(FACTORY)
    sys.path.insert(0, str(folder))
    try:
        import smallnet

        model = smallnet.make()
    finally:
        sys.path.remove(str(folder))
    x = torch.randn(1, 3, 8, 8)
    files = {
        "pt2": folder / "small.pt2",
        "torchscript": folder / "script.pt",
        "state_dict": folder / "weights.pt",
        "legacy": folder / "legacy.pt",
        "safetensors": folder / "weights.safetensors",
        "onnx": folder / "small.onnx",
    }
    torch.export.save(torch.export.export(model, (x,)), str(files["pt2"]))
    torch.jit.save(torch.jit.trace(model, (x,)), str(files["torchscript"]))
    torch.save(model.state_dict(), str(files["state_dict"]))
    torch.save(model.state_dict(), str(files["legacy"]), _use_new_zipfile_serialization=False)
    save_file(model.state_dict(), str(files["safetensors"]))
    torch.onnx.export(model, (x,), str(files["onnx"]), dynamo=False, input_names=["x"])
    return files


def rewrite_zip(
    source: Path, target: Path, replace: dict[str, bytes | None], add: dict[str, bytes] | None = None
) -> Path:
    """A copy of a zip archive with members replaced (None: dropped) or added, stored uncompressed as torch does."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            content = replace.get(name, old.read(name)) if name in replace else old.read(name)
            if content is not None:
                new.writestr(name, content)
        for name, content in (add or {}).items():
            new.writestr(name, content)
    return target


def bomb_zip(source: Path, target: Path, member: str) -> Path:
    """`member` replaced by BOMB_BYTES of deflated zeros (the rest copied, stored)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as new:
        for name in old.namelist():
            if name != member:
                new.writestr(name, old.read(name), compress_type=zipfile.ZIP_STORED)
                continue
            with new.open(name, "w") as f:
                chunk = bytes(16 << 20)
                for _ in range(BOMB_BYTES // len(chunk)):
                    f.write(chunk)
    return target


def _member(path: Path, suffix: str) -> str:
    return next(n for n in zipfile.ZipFile(path).namelist() if n.endswith(suffix))


def _pt2_json(path: Path, suffix: str) -> tuple[str, dict]:
    name = _member(path, suffix)
    return name, json.loads(zipfile.ZipFile(path).read(name))


def planted_cases(files: dict[str, Path], folder: Path, marker: Path) -> list[Case]:
    """A pickle calling os.system in every member of every zip archive, in a legacy pickle, and in the places a
    .pt2 unpickles by design (pickled weights, opaque and torchbind constants)."""
    evil = evil_pickle(str(marker))
    cases = []
    for kind in ("pt2", "torchscript", "state_dict"):
        source = files[kind]
        args = (
            SHAPE_ARGS
            if kind == "torchscript"
            else ["--arch", "smallnet:make", *SHAPE_ARGS]
            if kind == "state_dict"
            else []
        )
        for i, member in enumerate(zipfile.ZipFile(source).namelist()):
            path = rewrite_zip(source, folder / f"planted_{kind}_{i}{source.suffix}", {member: evil})
            cases.append(Case(f"{kind}: pickle planted in {member}", path, args, refused=EITHER))
    legacy = folder / "planted_legacy.pt"
    legacy.write_bytes(evil)
    cases.append(
        Case(
            "legacy torch.save: the whole file a planted pickle",
            legacy,
            ["--arch", "smallnet:make", *SHAPE_ARGS],
            refused="pickled Python objects",
        )
    )

    pt2 = files["pt2"]
    config_name, config = _pt2_json(pt2, "model_weights_config.json")
    first = next(iter(config["config"]))
    config["config"][first]["use_pickle"] = True
    weight_member = f"{config_name.rsplit('/', 1)[0]}/{config['config'][first]['path_name']}"
    path = rewrite_zip(
        pt2, folder / "planted_pickled_weight.pt2", {config_name: json.dumps(config).encode(), weight_member: evil}
    )
    cases.append(Case(".pt2: a weight marked as pickled holds the payload", path, refused="refused"))

    from torch.export.pt2_archive import constants as names

    constants_name, constants = _pt2_json(pt2, "model_constants_config.json")
    folder_name = constants_name.rsplit("/", 1)[0]
    for prefix, label in (
        (names.OPAQUE_OBJ_FILENAME_PREFIX, "opaque"),
        (names.CUSTOM_OBJ_FILENAME_PREFIX, "torchbind"),
    ):
        entry = {"path_name": f"{prefix}0", "is_param": False, "use_pickle": True, "tensor_meta": None}
        planted = {"config": {**constants["config"], f"evil_{label}": entry}}
        path = rewrite_zip(
            pt2,
            folder / f"planted_{label}.pt2",
            {constants_name: json.dumps(planted).encode()},
            add={f"{folder_name}/{prefix}0": evil},
        )
        cases.append(Case(f".pt2: an {label} constant holds the payload", path, refused="refused"))
    return cases


def code_cases(files: dict[str, Path], folder: Path, marker: Path) -> list[Case]:
    """.pt2 graphs that name Python to run: a call target outside the operators, a shape expression that sympy
    would evaluate, guard code that torch would exec when the module is built."""
    pt2 = files["pt2"]
    model_name, model = _pt2_json(pt2, "models/model.json")
    cases = []

    target = json.loads(json.dumps(model))
    node = next(n for n in target["graph_module"]["graph"]["nodes"] if "relu" in n["target"])
    node["target"] = "torch.os.system"
    path = rewrite_zip(pt2, folder / "target_os_system.pt2", {model_name: json.dumps(target).encode()})
    cases.append(Case(".pt2: a node calls torch.os.system", path, refused="operator"))

    expression = json.loads(json.dumps(model))
    payload = f"Symbol.__new__.__globals__['__builtins__']['__import__']('os').system('touch {marker}')"
    graph = expression["graph_module"]["graph"]
    graph["sym_int_values"]["evil"] = {"as_expr": {"expr_str": payload, "hint": {"as_int": 1}}}
    node = next(n for n in graph["nodes"] if "flatten" in n["target"])
    node["inputs"][1]["arg"] = {"as_sym_int": {"as_name": "evil"}}
    path = rewrite_zip(pt2, folder / "sympy_expression.pt2", {model_name: json.dumps(expression).encode()})
    cases.append(Case(".pt2: a shape expression that evaluates Python", path, refused="shape expression"))

    deep = rewrite_zip(pt2, folder / "deep_json.pt2", {model_name: b"[" * 200_000 + b"]" * 200_000})
    cases.append(Case(".pt2: model.json nested 200,000 deep", deep, refused="not valid JSON"))

    guards = json.loads(json.dumps(model))
    guards["guards_code"] = [f"__import__('os').system('touch {marker}') == 0"]
    path = rewrite_zip(pt2, folder / "guard_code.pt2", {model_name: json.dumps(guards).encode()})
    cases.append(Case(".pt2: guard code that torch would exec (dropped, never run)", path, refused=None))
    return cases


def bomb_cases(files: dict[str, Path], folder: Path) -> list[Case]:
    """1 GiB of deflated zeros (~5 MB on disk) as a weight storage of each zip format; stored members larger than
    their tensors; a safetensors header of a declared 10^12-element tensor."""
    cases = []
    for kind, suffix, args in (
        ("pt2", "weights/weight_0", []),
        ("torchscript", "data/0", SHAPE_ARGS),
        ("state_dict", "data/0", ["--arch", "smallnet:make", *SHAPE_ARGS]),
    ):
        source = files[kind]
        member = _member(source, suffix)
        path = bomb_zip(source, folder / f"bomb_{kind}{source.suffix}", member)
        cases.append(Case(f"{kind}: {member} a 1 GiB deflate bomb", path, args, refused="compression bomb"))
        path = rewrite_zip(source, folder / f"oversized_{kind}{source.suffix}", {member: bytes(8 << 20)})
        cases.append(
            Case(f"{kind}: {member} stored 8 MiB for a small tensor", path, args, refused="declared size lies")
        )
    header = json.dumps({"w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 16]}}).encode()
    path = folder / "huge_header.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    cases.append(
        Case(
            "safetensors: a 10^12-element tensor declared",
            path,
            ["--arch", "smallnet:make", *SHAPE_ARGS],
            refused="elements",
        )
    )
    path = folder / "long_header.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    cases.append(
        Case(
            "safetensors: a header length past the file",
            path,
            ["--arch", "smallnet:make", *SHAPE_ARGS],
            refused="not a valid safetensors file",
        )
    )
    return cases


def lying_external_data(folder: Path) -> list[Case]:
    """ONNX initializers of 4x4 floats whose external data declares 3 GiB (a sparse file), 2^40 or 8 bytes."""
    cases = []
    for label, length, file_size in (("3 GiB", 3 << 30, 3 << 30), ("2^40", 1 << 40, 64), ("8 bytes", 8, 64)):
        sub = folder / f"lying_{length}"
        sub.mkdir()
        data = sub / "weights.bin"
        with data.open("wb") as f:
            f.truncate(file_size)  # sparse: no disk used
        w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 4], data_location=TensorProto.EXTERNAL)
        for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", str(length))):
            w.external_data.add(key=key, value=value)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
            [w],
        )
        path = sub / "model.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        cases.append(Case(f"onnx: external data length {label} for 64 bytes", path, refused="declares"))
    return cases


def corpus(folder: Path, marker: Path) -> tuple[dict[str, Path], list[Case]]:
    files = base_files(folder)
    cases = planted_cases(files, folder, marker) + code_cases(files, folder, marker) + bomb_cases(files, folder)
    return files, cases + lying_external_data(folder)


def healthy_cases(files: dict[str, Path]) -> list[Case]:
    args = {
        "pt2": [],
        "torchscript": SHAPE_ARGS,
        "state_dict": ["--arch", "smallnet:make", *SHAPE_ARGS],
        "legacy": ["--arch", "smallnet:make", *SHAPE_ARGS],
        "safetensors": ["--arch", "smallnet:make", *SHAPE_ARGS],
        "onnx": [],
    }
    return [Case(f"healthy {kind}", path, args[kind]) for kind, path in files.items()]
