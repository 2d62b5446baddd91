"""Errors a handler raises to tell the pipeline what to do with a delivery."""

from __future__ import annotations


class PermanentError(Exception):
    """Bad input that no retry can fix: the delivery goes dead at once with this reason."""


class TransientError(Exception):
    """A passing fault (a peer down, a timeout): the delivery is retried with backoff.

    Any exception that is not a ``PermanentError`` is treated as transient; raise this
    one to say so explicitly.
    """


class InvalidEventError(PermanentError):
    """An event whose type, version or payload does not match a declared schema."""
