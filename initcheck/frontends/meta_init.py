"""Values for a model built on the meta device, from its own init code, one part of it at a time.

A meta-device model (`with torch.device("meta")`, or a config whose weights are never allocated) has shapes and
no values. The analysis needs each weight's statistics, so each *unit* (a subtree of modules small enough: a
decoder block, an embedding) is materialised in a copy of the model, initialised by the model's own init (a
transformers model's `_init_weights` over the whole copy, so that inits that scale a child by its name, as
GPT-2's residual projections, still apply; else each module's `reset_parameters`), read, and dropped before the
next. Peak memory is the largest unit, not the model. A value no init wrote is refused in one line: it was
filled with NaN (or the integer minimum) before the init ran.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

from initcheck.errors import ModelLoadError

_PARTS = 32  # a unit holds at most 1/_PARTS of the model (or its largest single tensor)


def on_meta(module) -> bool:
    return any(t.is_meta for t in module.parameters()) or any(t.is_meta for t in module.buffers())


class InitOnDemand:
    """Parameter and buffer name -> a real tensor, materialising the unit that holds it when first asked."""

    def __init__(self, root):
        self.root = root
        self.units = list(_units(root, ""))
        self.unit_of = {
            name: i
            for i, (prefix, module, recurse) in enumerate(self.units)
            for name in _names(prefix, module, recurse)
        }
        self.current: int | None = None
        self.values: dict = {}

    def __contains__(self, name: str) -> bool:
        return name in self.unit_of

    def value(self, name: str):
        unit = self.unit_of[name]
        if unit != self.current:
            self.values, self.current = {}, None  # drop the previous unit before making the next
            self.values, self.current = self._materialise(unit), unit
        return self.values[name]

    def _materialise(self, index: int) -> dict:
        import torch

        prefix, _, recurse = self.units[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(index)  # the same report for the same model, whichever unit is read first
            return self._initialised(prefix, recurse)

    def _initialised(self, prefix: str, recurse: bool) -> dict:
        import torch

        twin = copy.deepcopy(self.root)  # meta: no storage; the user's model is never touched
        unit = twin.get_submodule(prefix.rstrip(".")) if prefix else twin
        unit.to_empty(device="cpu", recurse=recurse)
        tensors = dict(_named_tensors(prefix, unit, recurse))
        with torch.no_grad():
            for t in tensors.values():
                t.fill_(_sentinel(t))
            _run_init(twin, unit, recurse)
        unwritten = next((name for name, t in tensors.items() if _still_sentinel(t)), None)
        if unwritten is not None:
            raise ModelLoadError(
                f"the model is on the meta device and its init does not write '{unwritten}' "
                f"({type(_owner(twin, unwritten)).__name__}): materialise the model (to_empty and its init) and "
                "analyse it, or give that module a reset_parameters()"
            )
        return {name: t.detach() for name, t in tensors.items()}


def _sentinel(t):
    """What no init writes: NaN for floats, the smallest integer for integers (booleans are not checked)."""
    import torch

    if t.is_floating_point():
        return float("nan")
    return False if t.dtype == torch.bool else torch.iinfo(t.dtype).min


def _still_sentinel(t) -> bool:
    import torch

    if t.is_floating_point():
        return bool(t.isnan().any())
    return t.dtype != torch.bool and t.numel() > 0 and bool((t == torch.iinfo(t.dtype).min).all())


def _run_init(twin, unit, recurse: bool) -> None:
    """The model's own init: a transformers model's _init_weights over every module (as its post_init applies it;
    meta tensors elsewhere make it cost nothing), else reset_parameters of each module in the unit."""
    init_weights = getattr(twin, "_init_weights", None)
    if callable(init_weights):
        twin.apply(init_weights)
        return
    for module in unit.modules() if recurse else [unit]:
        reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
        if callable(reset):
            reset()


def _units(module, prefix: str, limit: int | None = None) -> Iterator[tuple[str, object, bool]]:
    """(prefix, module, whole subtree?) covering every parameter and buffer once."""
    if limit is None:
        total = sum(t.numel() for t in _tensors(module, True))
        largest = max((t.numel() for t in _tensors(module, True)), default=1)
        limit = max(total // _PARTS, largest, 1)
    if sum(t.numel() for t in _tensors(module, True)) <= limit:
        yield prefix, module, True
        return
    if any(True for _ in _tensors(module, False)):
        yield prefix, module, False
    for name, child in module.named_children():
        yield from _units(child, f"{prefix}{name}.", limit)


def _tensors(module, recurse: bool):
    seen = set()
    for t in list(module.parameters(recurse=recurse)) + list(module.buffers(recurse=recurse)):
        if id(t) not in seen:
            seen.add(id(t))
            yield t


def _named_tensors(prefix: str, module, recurse: bool):
    yield from ((prefix + n, t) for n, t in module.named_parameters(recurse=recurse))
    yield from ((prefix + n, t) for n, t in module.named_buffers(recurse=recurse))


def _names(prefix: str, module, recurse: bool) -> list[str]:
    return [name for name, _ in _named_tensors(prefix, module, recurse)]


def _owner(root, name: str):
    path = name.rsplit(".", 1)[0] if "." in name else ""
    return root.get_submodule(path) if path else root
