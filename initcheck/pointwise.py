"""Scalar functions for every elementwise canonical op, and programs composed of them.

A program is a small, hashable expression tree over one root tensor x: ("x",), ("const", c) or
(op, attrs as sorted (key, value) pairs, args...). The fusion pass builds one per chain of elementwise ops that depends on a single
root (an exported GELU, SiLU written as x*sigmoid(x), x + tanh(x) ...), so operands that are functions
of the same tensor are treated as the correlated quantities they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np

_erf = np.frompyfunc(math.erf, 1, 1)


def erf(z: np.ndarray) -> np.ndarray:
    return np.asarray(_erf(np.asarray(z, dtype=np.float64)), dtype=np.float64)


def _sigmoid(z):
    return 0.5 * (1 + np.tanh(0.5 * z))


def _softplus(z):
    return np.logaddexp(0.0, z)


def _elu(z, alpha):
    return np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0)))


def _gelu(z, approximate="none"):
    if approximate == "tanh":
        return 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))
    return 0.5 * z * (1 + erf(z / np.sqrt(2)))


def _safe(fn):
    def wrapped(*args, **kw):
        with np.errstate(all="ignore"):
            return fn(*args, **kw)

    return wrapped


# name -> (function of (z, **attrs), kinks(attrs)); kinks are where the function is not smooth
UNARY: dict[str, tuple[Callable, Callable[[dict], tuple[float, ...]]]] = {
    "identity": (lambda z: z, lambda a: ()),
    "neg": (lambda z: -z, lambda a: ()),
    "relu": (lambda z: np.maximum(z, 0), lambda a: (0.0,)),
    "leaky_relu": (lambda z, alpha=0.01: np.where(z > 0, z, alpha * z), lambda a: (0.0,)),
    "elu": (lambda z, alpha=1.0: _elu(z, alpha), lambda a: (0.0,)),
    "celu": (
        lambda z, alpha=1.0: np.maximum(z, 0) + np.minimum(0, alpha * np.expm1(np.minimum(z, 0) / alpha)),
        lambda a: (0.0,),
    ),
    "selu": (
        lambda z, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875: gamma * _elu(z, alpha),
        lambda a: (0.0,),
    ),
    "tanh": (np.tanh, lambda a: ()),
    "sigmoid": (_sigmoid, lambda a: ()),
    "hard_sigmoid": (
        lambda z, alpha=0.2, beta=0.5: np.clip(alpha * z + beta, 0, 1),
        lambda a: ((-a.get("beta", 0.5)) / a.get("alpha", 0.2), (1 - a.get("beta", 0.5)) / a.get("alpha", 0.2)),
    ),
    "hard_swish": (lambda z: z * np.clip(z / 6 + 0.5, 0, 1), lambda a: (-3.0, 3.0)),
    "gelu": (_gelu, lambda a: ()),
    "silu": (lambda z: z * _sigmoid(z), lambda a: ()),
    "softplus": (_softplus, lambda a: ()),
    "softsign": (lambda z: z / (1 + np.abs(z)), lambda a: (0.0,)),
    "mish": (lambda z: z * np.tanh(_softplus(z)), lambda a: ()),
    "sin": (np.sin, lambda a: ()),
    "cos": (np.cos, lambda a: ()),
    "erf": (erf, lambda a: ()),
    "exp": (_safe(np.exp), lambda a: ()),
    "log": (_safe(np.log), lambda a: ()),
    "sqrt": (_safe(np.sqrt), lambda a: ()),
    "reciprocal": (_safe(lambda z: 1.0 / z), lambda a: ()),
    "rsqrt": (_safe(lambda z: 1.0 / np.sqrt(z)), lambda a: ()),
    "abs": (np.abs, lambda a: (0.0,)),
    "clip": (
        lambda z, min=-np.inf, max=np.inf: np.clip(z, min, max),
        lambda a: tuple(v for v in (a.get("min"), a.get("max")) if v is not None and np.isfinite(v)),
    ),
    "sign": (np.sign, lambda a: (0.0,)),
    "shrink": (
        lambda z, bias=0.0, lambd=0.5: np.where(z < -lambd, z + bias, np.where(z > lambd, z - bias, 0.0)),
        lambda a: (-a.get("lambd", 0.5), a.get("lambd", 0.5)),
    ),
    "thresholded_relu": (lambda z, alpha=1.0: np.where(z > alpha, z, 0.0), lambda a: (a.get("alpha", 1.0),)),
}

BINARY: dict[str, Callable] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": _safe(np.divide),
    "pow": _safe(np.power),
    "max": np.maximum,
    "min": np.minimum,
}

ELEMENTWISE = set(UNARY) | set(BINARY)

Program = tuple


def evaluate(program: Program, x: np.ndarray) -> np.ndarray:
    kind = program[0]
    if kind == "x":
        return x
    if kind == "const":
        return np.full_like(x, program[1], dtype=np.float64)
    op, attrs, args = program[0], dict(program[1]), program[2:]
    values = [evaluate(arg, x) for arg in args]
    if op in UNARY:
        return UNARY[op][0](values[0], **attrs)
    return BINARY[op](*values)


def kinks(program: Program) -> tuple[float, ...]:
    """Kinks of the program in x, where they are known (ops applied to x itself)."""
    if program[0] in ("x", "const"):
        return ()
    op, attrs, args = program[0], dict(program[1]), program[2:]
    found: list[float] = []
    if op in UNARY and args and args[0] == ("x",):
        found += UNARY[op][1](attrs)
    for arg in args:
        found += kinks(arg)
    return tuple(found)


def as_function(program: Program) -> Callable[[np.ndarray], np.ndarray]:
    def fn(z: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return evaluate(program, np.asarray(z, dtype=np.float64))

    return fn


def unary(op: str, **attrs) -> Program:
    return (op, tuple(sorted(attrs.items())), ("x",))


_PROBE = np.linspace(-4, 4, 33)
_NAMED: dict[str, Program] = {
    "relu": unary("relu"),
    "gelu": unary("gelu"),
    "gelu_tanh": unary("gelu", approximate="tanh"),
    "silu": unary("silu"),
    "mish": unary("mish"),
    "hard_swish": unary("hard_swish"),
    "tanh": unary("tanh"),
    "sigmoid": unary("sigmoid"),
    "elu": unary("elu"),
    "selu": unary("selu"),
    "softplus": unary("softplus"),
    "identity": ("x",),
}


def recognize(program: Program) -> str:
    """A readable name for a program: a known activation it matches numerically, else its outer op."""
    if program[0] in UNARY and len(program) == 3 and program[2] == ("x",):
        return program[0]
    values = as_function(program)(_PROBE)
    for name, known in _NAMED.items():
        if np.allclose(values, as_function(known)(_PROBE), rtol=1e-3, atol=1e-4):
            return name
    return "pointwise"


@lru_cache(maxsize=1024)
def never_negative(program: Program) -> bool:
    """Whether the program's output is >= 0 everywhere (a ReLU, a softplus): then P(phi > 0) is meaningful."""
    with np.errstate(all="ignore"):
        return bool(np.all(as_function(program)(np.linspace(-50.0, 50.0, 1001)) >= 0))


@lru_cache(maxsize=1024)
def positively_homogeneous(program: Program) -> bool:
    """phi(a z) = a phi(z) for a > 0 (ReLU, leaky ReLU, PReLU, |z|, scalings of them), checked numerically."""
    fn = as_function(program)
    z = np.linspace(-3.0, 3.0, 13)
    with np.errstate(all="ignore"):
        return bool(np.allclose(fn(2 * z), 2 * fn(z), atol=1e-9) and np.allclose(fn(0.5 * z), 0.5 * fn(z), atol=1e-9))


def rounded(x: float) -> float:
    """Moments as cache keys: equal to ten digits is equal."""
    return float(f"{x:.10g}")
