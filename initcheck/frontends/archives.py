"""What a model file is, decided by its content, and whether its declared sizes can be believed, decided before
anything is inflated or allocated.

torch's archives (.pt2, TorchScript, torch.save) are zips: every member's declared size is known from the central
directory before a byte is inflated, so a 4 GiB member deflated into 4 MB (a compression bomb) or a member larger than
the tensor it holds (a lying length) is refused here, in milliseconds and bounded memory. A .pt2 also names, in JSON,
each weight's shape and the symbolic shape expressions that torch's loader hands to sympy (which evaluates them):
both are checked before torch sees the file."""

from __future__ import annotations

import io
import json
import pickletools
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

from initcheck.errors import ModelLoadError
from initcheck.limits import check_shape, max_elements

_ZIP_ERRORS = (zipfile.BadZipFile, OSError, UnicodeDecodeError, ValueError, EOFError, NotImplementedError)
MAX_RATIO = 100  # deflate reaches ~1000:1 only on constant data; torch writes its archives uncompressed
_RATIO_FLOOR = 1 << 20  # members below 1 MiB inflated cannot hurt, whatever their ratio
_MAX_METADATA = 256 << 20  # JSON and pickle members describe tensors; they hold none
_MAX_ITEMSIZE = 16  # complex128: the largest element a tensor member can hold
_SAFETENSORS_HEADER_LIMIT = 100 << 20  # the safetensors library's own limit


_TORCH_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".tar"}


def sniff(path: Path) -> str:
    """'zip' (torch archives), 'safetensors', 'pickle' (legacy torch.save), 'onnx' or 'unknown', by content; where
    the content says nothing, a torch or safetensors suffix decides (old pickles, damaged headers: their loader
    then says what is wrong)."""
    try:
        with path.open("rb") as f:
            head = f.read(16)
            size = path.stat().st_size
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read ({e.strerror})") from None
    if head[:4] == b"PK\x03\x04" or _is_zip(path):  # a local header first, or an end-of-directory record
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{" and 2 <= struct.unpack("<Q", head[:8])[0] <= size - 8:
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in bytes(range(2, 6)):
        return "pickle"
    if head[:1] == b"\x08":  # field 1 (ir_version), varint: how every ONNX ModelProto begins
        return "onnx"
    suffix = path.suffix.lower()
    return "safetensors" if suffix == ".safetensors" else "pickle" if suffix in _TORCH_SUFFIXES else "unknown"


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def open_archive(path: Path) -> zipfile.ZipFile:
    """The zip's directory, with every member's declared size checked (nothing inflated yet)."""
    try:
        archive = zipfile.ZipFile(path)
        members = archive.infolist()
    except _ZIP_ERRORS as e:  # a damaged directory
        raise ModelLoadError(f"{path}: corrupt archive ({type(e).__name__}: {str(e)[:120]})") from None
    limit = max_elements() * _MAX_ITEMSIZE
    for m in members:
        if m.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ModelLoadError(f"{path}: member '{m.filename}' uses an unsupported compression ({m.compress_type})")
        if m.file_size > limit:
            raise ModelLoadError(
                f"{path}: member '{m.filename}' declares {m.file_size:,} bytes, more than any tensor "
                f"within the limit of {max_elements():.3g} elements (--max-elements)"
            )
        if (
            m.compress_type == zipfile.ZIP_DEFLATED
            and m.file_size > _RATIO_FLOOR
            and m.file_size > MAX_RATIO * max(m.compress_size, 1)
        ):
            raise ModelLoadError(
                f"{path}: member '{m.filename}' would inflate {m.compress_size:,} bytes to "
                f"{m.file_size:,} (ratio {m.file_size / max(m.compress_size, 1):.0f}:1): a compression "
                "bomb, refused"
            )
    return archive


def archive_kind(path: Path, archive: zipfile.ZipFile) -> str:
    names = archive.namelist()
    if any(n.endswith("models/model.json") or n.endswith("/archive_format") for n in names):
        return "pt2"
    if any("/code/" in n for n in names):
        return "torchscript"
    return "torch.save"


def read_member(path: Path, archive: zipfile.ZipFile, name: str) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > _MAX_METADATA:
        raise ModelLoadError(f"{path}: member '{name}' declares {info.file_size:,} bytes of metadata; refused")
    try:
        return archive.read(name)
    except _ZIP_ERRORS + (zipfile.LargeZipFile, RuntimeError) as e:
        raise ModelLoadError(f"{path}: member '{name}' is damaged ({type(e).__name__})") from None


# -- storages of torch.save / TorchScript pickles ---------------------------------------------------------

_STORAGE_ITEMSIZE = {
    "DoubleStorage": 8,
    "FloatStorage": 4,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "LongStorage": 8,
    "IntStorage": 4,
    "ShortStorage": 2,
    "CharStorage": 1,
    "ByteStorage": 1,
    "BoolStorage": 1,
    "ComplexFloatStorage": 8,
    "ComplexDoubleStorage": 16,
    "UntypedStorage": 1,
}


def check_pickled_storages(path: Path, archive: zipfile.ZipFile) -> None:
    """Each storage record exactly the size its pickle declares (numel x element size: torch.save writes whole
    storages), or empty (TorchScript leaves its traced inputs' records empty). The pickles are read as opcodes,
    never executed."""
    for pkl in [n for n in archive.namelist() if n.endswith(".pkl")]:
        records = pkl[: -len(".pkl")] + "/"  # data.pkl's storages lie in data/, constants.pkl's in constants/ ...
        for key, nbytes in _storages(read_member(path, archive, pkl)).items():
            record = archive.NameToInfo.get(records + key)
            if record is not None and record.file_size not in (0, nbytes):
                raise _lying(path, record, "storage", nbytes)


_SCALAR_OPS = {
    "GLOBAL",
    "BINUNICODE",
    "SHORT_BINUNICODE",
    "UNICODE",
    "BINUNICODE8",
    "BININT",
    "BININT1",
    "BININT2",
    "LONG1",
    "LONG4",
    "INT",
    "LONG",
}


def _storages(data: bytes) -> dict[str, int]:
    """storage key -> bytes, from the ('storage', <Type>Storage, key, location, numel) persistent ids: the scalars
    pushed (directly or from the memo) before each persistent-id opcode."""
    found: dict[str, int] = {}
    recent: list = []
    memo: dict = {}
    last = None
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            name = opcode.name
            if name in _SCALAR_OPS:
                last = arg
            elif name == "STACK_GLOBAL" and len(recent) >= 2:
                last = f"{recent[-2]} {recent[-1]}"
            elif name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
                memo[arg if name != "MEMOIZE" else len(memo)] = last
                continue
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                last = memo.get(arg)
            elif name in ("BINPERSID", "PERSID"):
                _storage_record(recent, found)
                recent, last = [], None
                continue
            else:
                last = None
                continue
            recent = (recent + [last])[-8:]
    except Exception:  # a damaged pickle: torch's own loader will refuse it in one line
        return found
    return found


def _storage_record(recent: list, found: dict[str, int]) -> None:
    for i in range(len(recent) - 5, -1, -1):
        kind, storage_type, key, _, numel = recent[i : i + 5]
        if kind == "storage" and isinstance(storage_type, str) and isinstance(numel, int) and isinstance(key, str):
            itemsize = _STORAGE_ITEMSIZE.get(storage_type.split()[-1].split(".")[-1])
            if itemsize:
                found[key] = numel * itemsize
            return


# -- .pt2 -------------------------------------------------------------------------------------------------

# torch.export's serialized ScalarType -> bytes per element (unknown codes: the largest, so never a false refusal)
_DTYPE_ITEMSIZE = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 2,
    7: 4,
    8: 8,
    9: 4,
    10: 8,
    11: 16,
    12: 1,
    13: 2,
    28: 2,
    29: 1,
    30: 1,
    31: 1,
    32: 1,
    33: 1,
    34: 4,
    35: 8,
}
# tokens of a symbolic shape expression as torch writes them (s0*s1, Max(1, s0), FloorDiv(s0, 2), Eq(u0, 3) ...):
# numbers, symbols, capitalised sympy/torch function names, operators. No attribute access, strings, subscripts,
# comprehensions or lambdas: nothing sympy's parser could turn into a call of arbitrary Python.
_EXPR_TOKEN = re.compile(
    r"\s*(?:(\d+(?:\.\d+)?(?:e[+-]?\d+)?)|([A-Za-z][A-Za-z0-9_]*)|(\*\*|//|[<>=!]=|[-+*/%(),<>&|~]))"
)
_LOWER_NAMES = {"oo", "zoo", "nan", "true", "false", "floor", "ceiling", "sqrt", "exp", "log", "sin", "cos", "tan"}
_SYMBOL = re.compile(r"[a-z]{1,4}\d+")


def check_pt2(path: Path, archive: zipfile.ZipFile) -> None:
    """Weights and constants no larger than their tensors; shape expressions of a safe form."""
    names = archive.namelist()
    for config in [n for n in names if n.endswith(("_weights_config.json", "_constants_config.json"))]:
        folder = config.rsplit("/", 1)[0]
        _check_payload_sizes(path, archive, folder, _json(path, archive, config))
    for model in [n for n in names if "/models/" in n and n.endswith(".json")]:
        _check_expressions(path, _json(path, archive, model))


def _json(path: Path, archive: zipfile.ZipFile, name: str):
    try:
        return json.loads(read_member(path, archive, name))
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nesting deeper than any model writes
        raise ModelLoadError(f"{path}: member '{name}' is not valid JSON") from None


def _check_payload_sizes(path: Path, archive: zipfile.ZipFile, folder: str, config) -> None:
    needed: dict[str, int] = {}
    entries = config.get("config", {}) if isinstance(config, dict) else {}
    for fqn, payload in entries.items() if isinstance(entries, dict) else []:
        meta: Any = payload.get("tensor_meta") if isinstance(payload, dict) else None  # JSON, checked below
        if not isinstance(meta, dict) or payload.get("use_pickle"):
            continue
        sizes: list[Any] = [s.get("as_int") for s in meta.get("sizes", []) if isinstance(s, dict)]
        strides: list[Any] = [s.get("as_int") for s in meta.get("strides", []) if isinstance(s, dict)]
        offset = (meta.get("storage_offset") or {}).get("as_int", 0)
        dtype: Any = meta.get("dtype")
        itemsize = _DTYPE_ITEMSIZE.get(dtype, _MAX_ITEMSIZE)
        if not all(isinstance(d, int) for d in sizes + strides + [offset]):
            continue  # symbolic sizes: torch checks the record against them
        check_shape(f"{path}: weight '{fqn}'", sizes)
        extent = 0 if 0 in sizes else offset + 1 + sum((d - 1) * abs(s) for d, s in zip(sizes, strides))
        name = f"{folder}/{payload.get('path_name')}"
        needed[name] = max(needed.get(name, 0), extent * itemsize)
    for name, nbytes in needed.items():  # a record may hold a whole storage that a view uses part of: some slack
        record = archive.NameToInfo.get(name)
        if record is not None and record.file_size > 2 * nbytes + _RATIO_FLOOR:
            raise _lying(path, record, "tensor", nbytes)


def _lying(path: Path, record: zipfile.ZipInfo, what: str, nbytes: int) -> ModelLoadError:
    return ModelLoadError(
        f"{path}: member '{record.filename}' holds {record.file_size:,} bytes for a {what} of "
        f"{nbytes:,}: its declared size lies; refused"
    )


def _check_expressions(path: Path, model) -> None:
    """Every string torch's loader evaluates with sympy: `expr_str` values and range-constraint symbols."""
    texts: list[str] = []
    stack: list[tuple[object, str | None]] = [(model, None)]  # iterative: a crafted file can nest arbitrarily deep
    while stack:
        node, key = stack.pop()
        if isinstance(node, dict):
            if key == "range_constraints":
                texts.extend(k for k in node if isinstance(k, str))
            texts.extend(v for k, v in node.items() if k == "expr_str" and isinstance(v, str))
            stack.extend((v, k) for k, v in node.items() if k != "expr_str")
        elif isinstance(node, list):
            stack.extend((v, None) for v in node)
    for text in texts:
        if not _safe_expression(text):
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise ModelLoadError(
                f"{path}: a shape expression is not of the form torch writes ('{shown}'); "
                "refused, since torch's loader would evaluate it as Python"
            )


def _safe_expression(text: str) -> bool:
    position = 0
    while position < len(text):
        match = _EXPR_TOKEN.match(text, position)
        if not match or match.end() == position:
            return text[position:].strip() == ""
        name = match.group(2)
        if name and not (name[0].isupper() or name in _LOWER_NAMES or _SYMBOL.fullmatch(name)):
            return False
        position = match.end()
    return True


def check_safetensors(path: Path) -> None:
    """The header's declared shapes within the size limit and its length within the file, before loading."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > _SAFETENSORS_HEADER_LIMIT or length > path.stat().st_size - 8:
                raise ModelLoadError(f"{path}: not a valid safetensors file (header of {length:,} bytes)")
            header = json.loads(f.read(length))
    except (struct.error, ValueError, UnicodeDecodeError):
        raise ModelLoadError(f"{path}: not a valid safetensors file (unreadable header)") from None
    for name, entry in header.items() if isinstance(header, dict) else []:
        if isinstance(entry, dict) and isinstance(entry.get("shape"), list):
            check_shape(f"{path}: tensor '{name}'", entry["shape"])
