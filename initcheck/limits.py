"""Bounds for untrusted models: no tensor or shape beyond a size limit is ever materialised (a file can declare
a 10^12-element weight or input in a few bytes), and an analysis can be given a wall-clock limit.

The size limit is per tensor, in elements; the default (2^31, the int32 index range) admits every real model
while refusing shapes no runtime could allocate. Set it with --max-elements or `limits.max_elements`."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from contextvars import ContextVar

from initcheck.errors import ModelLoadError

DEFAULT_MAX_ELEMENTS = 1 << 31
# beyond this many positions an axis' zero-padding border profile changes K by < k/length: taken as interior
MAX_PROFILE_LENGTH = 1 << 20
# a position kernel is a T x T matrix per tensor (docs/theory.md §16): longer sequences go without one
MAX_KERNEL_LENGTH = 256

_max_elements: ContextVar[int] = ContextVar("max_elements", default=DEFAULT_MAX_ELEMENTS)


def max_elements() -> int:
    return _max_elements.get()


@contextlib.contextmanager
def elements_at_most(limit: int | None):
    token = _max_elements.set(limit or DEFAULT_MAX_ELEMENTS)
    try:
        yield
    finally:
        _max_elements.reset(token)


def element_count(shape) -> int | None:
    """Elements of a shape; None when a dimension is unknown or negative."""
    dims = list(shape)
    if any(not isinstance(d, int) or d < 0 for d in dims):
        return None
    return math.prod(dims)


def check_shape(what: str, shape) -> None:
    """Refuse a tensor larger than the limit before anything of its size is allocated."""
    count = element_count(shape)
    if count is not None and count > max_elements():
        dims = "x".join(str(d) for d in shape)
        dims = (
            dims if len(dims) <= 80 else f"{dims[:60]}... ({len(list(shape))} dims)"
        )  # damaged files: one readable line
        raise ModelLoadError(
            f"{what} has {_approx(count)} elements (shape {dims}), more than the limit of "
            f"{max_elements():.3g} (raise it with --max-elements if the model is real)"
        )


def _approx(count: int) -> str:
    return f"{float(count):.3g}" if count < 10**300 else f"~1e{len(str(count)) - 1}"  # dims multiply past float range


class TimeLimitExceeded(BaseException):
    """Not an Exception: the `except Exception` that keeps one failing rule from ending an analysis must not
    swallow the deadline (as KeyboardInterrupt)."""


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str):
    """Stop the analysis after `seconds` of wall-clock time (main thread on POSIX; elsewhere no limit)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not seconds or not usable:
        yield
        return

    def expire(signum, frame):
        raise TimeLimitExceeded(f"{what}: analysis stopped after the time limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
