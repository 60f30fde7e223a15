"""The errors fedmeta raises for bad input: each names the value and what is allowed."""


class FedmetaError(Exception):
    """Base of every error fedmeta reports to its user as a message, not a traceback."""

    exit_code = 2  # of ``fedmeta``: bad input (config, data, folders)


class ConfigError(FedmetaError, ValueError):
    """A configuration field has a value outside what it allows."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        name = field if str(field).isprintable() else repr(field)  # one line, whatever given
        super().__init__(f"{name}={_shown(value)} is not allowed: expected {allowed}")

    def __reduce__(self) -> tuple:  # picklable, so it crosses process pools and Ray whole
        return type(self), (self.field, self.value, self.allowed)


def _shown(value: object) -> str:
    """``repr(value)``, or a description where Python refuses it (an int of > 4300 digits)."""
    try:
        return repr(value)
    except ValueError:
        return f"<{type(value).__name__} too large to print>"


class DataError(FedmetaError):
    """A data file or folder is missing, corrupt, or cannot give what was asked of it."""


class RunFailed(FedmetaError):
    """A federated run ended without a training round that stepped the server, or without
    a held-out score of its final meta-model; the message says what the devices reported."""

    exit_code = 3
