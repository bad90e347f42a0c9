"""User-facing errors: each becomes one line on stderr and exit code 2; the CLI's exit codes."""

# 0 clean, 1 a finding at or above --fail-on, 2 usage or load error, 130 interrupted (128 + SIGINT)
EXIT_OK, EXIT_FINDINGS, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


class InitcheckError(Exception):
    """An error the user can act on (bad file, bad option). Never shown with a traceback."""


class ModelLoadError(InitcheckError):
    """The model file is missing, unreadable or malformed."""


class UsageError(InitcheckError):
    """An option or argument is invalid."""


def one_line(text: object) -> str:
    """A message as one printable line: names taken from a damaged file may hold newlines or control bytes."""
    return "".join(
        c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in str(text)
    )


def debugging() -> bool:
    """INITCHECK_DEBUG set (the tests set it): failures inside rules and checks raise instead of degrading."""
    import os

    return bool(os.environ.get("INITCHECK_DEBUG"))
