"""User-facing errors: each becomes one line on stderr and exit code 2."""


class InitcheckError(Exception):
    """An error the user can act on (bad file, bad option). Never shown with a traceback."""


class ModelLoadError(InitcheckError):
    """The model file is missing, unreadable or malformed."""


class UsageError(InitcheckError):
    """An option or argument is invalid."""
