"""The errors fedmeta raises for bad input: each names the value and what is allowed."""


class FedmetaError(Exception):
    """Base of every error fedmeta reports to its user as a message, not a traceback."""


class ConfigError(FedmetaError, ValueError):
    """A configuration field has a value outside what it allows."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}={value!r} is not allowed: expected {allowed}")


class DataError(FedmetaError):
    """A data file or folder is missing, corrupt, or cannot give what was asked of it."""
