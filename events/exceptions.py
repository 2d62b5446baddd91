"""Errors a handler raises to tell the pipeline what to do with a delivery."""

from __future__ import annotations


class PermanentError(Exception):
    """Bad input that no retry can fix: the delivery goes dead at once with this reason."""


class TransientError(Exception):
    """A passing fault (a peer down, a timeout): the delivery is retried with backoff.

    Any exception that is not a ``PermanentError`` is treated as transient; raise this
    one to say so explicitly.
    """


class DependencyUnavailable(TransientError):
    """What the handler depends on could not be reached (connection refused or cut, a
    timeout, a 5xx): a fault of the dependency, not of this message.

    Retried like any ``TransientError``; the difference is the consumer's breaker. It
    counts every such failure, even one delivery failing again and again, so an outage
    during which a single delivery waits still opens it, and that delivery parks instead
    of going dead. A plain ``TransientError`` repeated by one delivery is never counted
    again: it may be the message (a poison message must not hold its consumer's other
    deliveries). Raise this only when the dependency itself failed.
    """


class DeliveryBusy(TransientError):
    """Another attempt is handling this delivery right now (a duplicate message).

    Not a failure: the delivery is tried again after ``retry_after`` seconds without
    counting an attempt. By then the other attempt has finished it (and this message is
    skipped) or has died (and this one takes over).
    """

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidEventError(PermanentError):
    """An event whose type, version or payload does not match a declared schema."""
