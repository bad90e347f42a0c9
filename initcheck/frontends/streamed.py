"""Weights read one tensor at a time from safetensors checkpoints (one file, or shards with their index JSON), for
the symbolic pass: the --arch model is built on the meta device and each weight is read when the analysis reaches
it, then dropped, so peak memory is the largest tensor, not the model (twice, as loading a state dict into a built
model costs). The probe needs the whole model and takes the loading route instead.
"""

from __future__ import annotations

import json
from pathlib import Path

from initcheck.errors import ModelLoadError, UsageError
from initcheck.frontends import archives

INDEX_SUFFIX = ".safetensors.index.json"


def is_index(path: Path) -> bool:
    return path.name.endswith(INDEX_SUFFIX)


def tensor_files(path: Path) -> dict[str, Path]:
    """Checkpoint key -> the safetensors file holding it (headers only: no tensor is read)."""
    if is_index(path):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
            files = {str(k): path.parent / str(v) for k, v in weight_map.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ModelLoadError(f"{path}: not a safetensors index (a JSON object with a 'weight_map')") from None
        outside = next((f for f in files.values() if f.resolve().parent != path.parent.resolve()), None)
        if outside is not None:  # an index names its shards beside it; never a path elsewhere
            raise ModelLoadError(f"{path}: the index names a shard outside its folder ('{outside.name}')")
        missing = next((f for f in set(files.values()) if not f.is_file()), None)
        if missing is not None:
            raise ModelLoadError(f"{path}: shard '{missing.name}' is missing")
        for shard in sorted(set(files.values())):
            archives.check_safetensors(shard)  # declared shapes within the limits before any header is parsed
        return files
    archives.check_safetensors(path)
    return dict.fromkeys(_keys(path), path)


def _keys(path: Path) -> list[str]:
    safe_open = _safe_open()
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as e:  # header corrupt
        raise ModelLoadError(f"{path}: not a valid safetensors file ({type(e).__name__})") from None


def _safe_open():
    try:
        from safetensors import safe_open
    except ImportError:
        raise UsageError("reading .safetensors needs the safetensors package: pip install safetensors") from None
    return safe_open


class CheckpointValues:
    """Model parameter/buffer name -> its tensor, read from the checkpoint when asked (the file is closed
    again, so nothing stays mapped); names the checkpoint does not hold (buffers computed at
    construction, as rotary frequencies) come from `fallback` (the model's own init)."""

    def __init__(self, files: dict[str, Path], names: dict[str, str], fallback=None):
        self.files, self.names, self.fallback = files, names, fallback

    def __contains__(self, name: str) -> bool:
        return name in self.names or (self.fallback is not None and name in self.fallback)

    def value(self, name: str):
        if name not in self.names:
            return self.fallback.value(name)
        key = self.names[name]
        with _safe_open()(str(self.files[key]), framework="pt") as f:
            return f.get_tensor(key)  # its own copy: nothing stays mapped once the file is closed


def all_tensors(files: dict[str, Path]) -> dict:
    """Every tensor of the checkpoint (for the probe, which needs the whole model)."""
    from safetensors.torch import load_file

    state: dict = {}
    for file in sorted(set(files.values())):
        try:
            state.update(load_file(str(file)))
        except Exception as e:  # header or data corrupt
            raise ModelLoadError(f"{file}: not a valid safetensors file ({type(e).__name__})") from None
    return state
