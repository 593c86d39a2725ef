"""Errors that tell the user what to do next."""


class NbinterpError(ValueError):
    """Bad input or an unsupported setting; the message says how to fix it."""


class UnsupportedArchitectureError(NbinterpError):
    """The model's structure has no adapter; the message names what is missing."""


class RemoteError(NbinterpError):
    """A remote (NDIF) request could not be made; the message says why."""
