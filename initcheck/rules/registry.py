"""Rule tables: one forward and one backward table, both keyed by canonical op.

A forward rule maps (node, input moments, ctx) to the output Moments (or a list, one per output);
`None` stands for inputs that carry no signal (constants, shapes, masks). A backward rule maps
(node, input moments, output moments, output gradient second moments, ctx) to one gradient second
moment per input. Rules are pure: they never see tensors, only the statistics on the node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

FORWARD: dict[str, Callable] = {}
BACKWARD: dict[str, Callable] = {}
APPROXIMATE: set[str] = set()  # ops whose forward rule is an approximation by construction


@dataclass(frozen=True)
class Unsupported:
    reason: str


def _register(table: dict[str, Callable], ops: tuple[str, ...], approximate: bool):
    def decorate(fn: Callable) -> Callable:
        taken = [op for op in ops if op in table]
        if taken:
            raise ValueError(f"duplicate rule for op {taken[0]!r}")
        for op in ops:
            table[op] = fn
            if approximate:
                APPROXIMATE.add(op)
        return fn

    return decorate


def forward_rule(*ops: str, approximate: bool = False):
    return _register(FORWARD, ops, approximate)


def backward_rule(*ops: str):
    return _register(BACKWARD, ops, False)


def load_all() -> None:
    """Import every rule module so the tables are filled."""
    from initcheck.rules import (  # noqa: F401
        activations,
        attention,
        linear,
        merge,
        norm,
        pool,
        recurrent,
        shape,
    )
