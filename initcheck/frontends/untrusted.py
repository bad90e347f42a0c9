"""Loading files from anywhere: nothing in a model file runs unless the user trusts it, and third-party chatter
never reaches the user's terminal.

torch's loaders unpickle in many places (a state dict, a .pt2's sample inputs, pickled weights and constants, opaque
and torchbind objects), and some of them retry a refused `weights_only=True` load without the restriction. Guarding
each call site would break with the next torch release, so every load of an untrusted file runs inside
`no_code_from_files()`, which closes the whole class at its root:

- `torch.load` is held to `weights_only=True` (tensors and plain containers: no callable can be reached);
- a process-wide audit hook refuses, in the guarded thread only, every `pickle.find_class` (the only way a pickle
  reaches a callable, whoever unpickles), every process start, and every file opened for writing;
- torchbind's C++ unpickler (`torch._C._pickle_load_obj`) is refused.

A refusal is recorded as well as raised, so a loader that swallows the exception cannot turn it into success.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import threading
import warnings
from contextvars import ContextVar
from dataclasses import dataclass, field

from initcheck.errors import ModelLoadError

# audit events that mean code from the file is running (or about to): refused while a guard is active
_REFUSED_EVENTS = {
    "pickle.find_class": "unpickle a Python object",
    "os.system": "start a shell command",
    "os.exec": "start a program",
    "os.posix_spawn": "start a program",
    "os.spawn": "start a program",
    "os.fork": "fork the process",
    "os.forkpty": "fork the process",
    "subprocess.Popen": "start a program",
    "os.startfile": "open a file with its program",
    "socket.connect": "open a network connection",
    "os.remove": "delete a file",
    "os.rename": "rename a file",
    "os.rmdir": "delete a folder",
    "shutil.rmtree": "delete a folder",
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class CodeFromFileRefused(ModelLoadError):
    """The file tried to run code (unpickle an object, start a program, write a file) without --trust-pickle."""


@dataclass
class _Guard:
    what: str
    tempdir: str  # resolved before the guard starts: tempfile's first call itself writes a probe file
    refusals: list[str] = field(default_factory=list)


_active: ContextVar[_Guard | None] = ContextVar("initcheck_untrusted_guard", default=None)
_hook_installed = False
_patching = threading.RLock()  # torch.load is patched process-wide: one guarded load at a time


def _audit(event: str, args: tuple) -> None:
    guard = _active.get()
    if guard is None:
        return
    reason = _REFUSED_EVENTS.get(event)
    if reason is None and event == "open" and _opens_for_writing(args, guard.tempdir):
        reason = "write a file"
    if reason is None:
        return
    detail = f"{args[0]}.{args[1]}" if event == "pickle.find_class" and len(args) == 2 else ""
    guard.refusals.append(f"{reason} ({detail})" if detail else reason)
    _active.set(None)  # the exception below builds strings and may import; do not recurse into the guard
    try:
        raise CodeFromFileRefused(refusal_message(guard))
    finally:
        _active.set(guard)


def _opens_for_writing(args: tuple, tempdir: str) -> bool:
    path, mode, flags = (args[0], args[1], args[2]) if len(args) >= 3 else (None, None, 0)
    if "__pycache__" in str(path):
        return False  # Python caching the bytecode of a module that the loader imports lazily
    if isinstance(flags, int) and flags & os.O_EXCL and os.path.dirname(str(path)) == tempdir:
        return False  # a fresh temporary file (torch's loader makes one): it cannot overwrite anything
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def refusal_message(guard: _Guard) -> str:
    return (
        f"{guard.what}: refused: loading it would {guard.refusals[0]}, which runs code from the file; pass "
        "--trust-pickle only if you trust its source"
    )


def _install_hook() -> None:
    global _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)  # cannot be removed: it does nothing outside a guard
        _hook_installed = True


@contextlib.contextmanager
def no_code_from_files(what: str, trusted: bool = False):
    """Run a load of an untrusted file; raise CodeFromFileRefused if anything in it tried to run code, even when
    the loader caught and swallowed the refusal. With `trusted`, nothing is restricted (--trust-pickle)."""
    if trusted:
        yield
        return
    _install_hook()
    guard = _Guard(what, tempfile.gettempdir())
    token = _active.set(guard)
    try:
        with _torch_restricted(guard):
            yield
    except CodeFromFileRefused:
        raise
    except Exception:
        if guard.refusals:  # the loader turned our refusal into its own error: say what really happened
            raise CodeFromFileRefused(refusal_message(guard)) from None
        raise
    finally:
        _active.reset(token)
    if guard.refusals:
        raise CodeFromFileRefused(refusal_message(guard))


@contextlib.contextmanager
def _torch_restricted(guard: _Guard):
    """torch.load held to weights_only=True; torchbind objects refused. Restored afterwards."""
    torch = sys.modules.get("torch")
    if torch is None:  # nothing of torch's can run before it is imported, and then inside this guard
        yield
        return
    import torch.serialization as serialization

    def refuse_torchbind(*args, **kwargs):
        guard.refusals.append("restore a torchbind object (custom C++ class state)")
        raise CodeFromFileRefused(refusal_message(guard))

    with _patching:
        original_load, original_pickle_obj = serialization.load, getattr(torch._C, "_pickle_load_obj", None)

        def weights_only_load(f, *args, **kwargs):
            kwargs["weights_only"] = True
            kwargs.pop("pickle_module", None)  # an unrestricted unpickler could be passed in here
            try:
                return original_load(f, *args, **kwargs)
            except Exception as e:
                if "weights_only" in str(e) or "Unsupported global" in str(e):
                    guard.refusals.append("unpickle Python objects that only an unrestricted unpickler can load")
                raise

        torch.load = serialization.load = weights_only_load  # type: ignore[attr-defined]
        if original_pickle_obj is not None:
            torch._C._pickle_load_obj = refuse_torchbind
        try:
            yield
        finally:
            torch.load = serialization.load = original_load  # type: ignore[attr-defined]
            if original_pickle_obj is not None:
                torch._C._pickle_load_obj = original_pickle_obj


@contextlib.contextmanager
def quiet_third_party():
    """Silence the libraries we call while loading and exporting: their warnings, logging (tracebacks of caught
    errors) and direct writes to stderr (torch.export prints a partial FX graph when it fails). Our own error line
    says what went wrong; with INITCHECK_DEBUG / --debug the captured text is shown after all."""
    from initcheck.errors import debugging

    previous = logging.root.manager.disable
    captured = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stderr(captured):
        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)
        try:
            yield
        finally:
            logging.disable(previous)
    if debugging() and captured.getvalue():
        sys.stderr.write(captured.getvalue())
