"""Frontends translate a model file into the graph IR. They compute weight statistics; they never analyse."""

from __future__ import annotations

from pathlib import Path

from initcheck.errors import ModelLoadError
from initcheck.ir import Graph


def load(path: str | Path, input_shapes: dict[str, tuple[int, ...]] | None = None, training: bool = False) -> Graph:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, expected a model file")
    if path.suffix.lower() == ".onnx" or _looks_like_onnx(path):
        from initcheck.frontends.onnx_frontend import load_onnx

        return load_onnx(path, input_shapes or {}, training)
    raise ModelLoadError(f"{path}: unsupported model format '{path.suffix}' (supported: .onnx)")


def _looks_like_onnx(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read ({e.strerror})") from None
    return b"pytorch" in head or head[:1] == b"\x08"
