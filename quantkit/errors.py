"""One error type per failure class, caught at the CLI edge (see quantkit.cli).

Messages are one line and name the file, tensor or config key, what was
expected and what was found. Bad input exits with status 2, everything else 1.
"""


class QuantkitError(Exception):
    exit_code = 1


class BadInput(QuantkitError):
    """A user-supplied file, option or value is wrong."""

    exit_code = 2


class BadFile(BadInput):
    """A model, text or build file is malformed, truncated or missing."""


class BadConfig(BadInput):
    """A model config is missing a field or holds an inconsistent value."""


class UnsupportedModel(BadInput):
    """The model's architecture or a feature of it is not supported."""


class BadOption(BadInput):
    """A command-line option has a value quantkit cannot use."""


class IOFailure(QuantkitError):
    """Reading or writing failed for reasons outside the input (disk full, permissions)."""
