"""One kind of registry for every per-op (or per-name) table: rules, frontend handlers, probe kernels.

A `Table` is a dict filled by a decorator that refuses a key registered twice, so two handlers for one op
cannot silently shadow each other depending on import order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class Table(dict[str, Callable]):
    def __init__(self, what: str):
        super().__init__()
        self.what = what  # "rule", "ONNX handler", ...: named in the duplicate error

    def add(self, keys: tuple[str, ...], fn: Callable) -> None:
        taken = [k for k in keys if k in self]
        if taken:
            raise ValueError(f"duplicate {self.what} for {taken[0]!r}")
        for key in keys:
            self[key] = fn

    def register(self, *keys: str) -> Callable[[F], F]:
        def decorate(fn: F) -> F:
            self.add(keys, fn)
            return fn

        return decorate
