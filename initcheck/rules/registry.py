"""Rule tables: one forward and one backward table, both keyed by canonical op.

A forward rule maps (node, input moments, ctx) to the output Moments (or a list, one per output);
`None` stands for inputs that carry no signal (constants, shapes, masks). A backward rule maps
(node, input moments, output moments, output gradient second moments, ctx) to one gradient second
moment per input. Rules are pure: they never see tensors, only the statistics on the node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from initcheck.registry import Table

FORWARD = Table("forward rule")
BACKWARD = Table("backward rule")
APPROXIMATE: set[str] = set()  # ops whose forward rule is an approximation by construction


@dataclass(frozen=True)
class Unsupported:
    reason: str


def forward_rule(*ops: str, approximate: bool = False) -> Callable[[Callable], Callable]:
    if approximate:
        APPROXIMATE.update(ops)
    return FORWARD.register(*ops)


def backward_rule(*ops: str) -> Callable[[Callable], Callable]:
    return BACKWARD.register(*ops)


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
