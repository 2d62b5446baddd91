"""The consumer registry: which app handles which event types, on which queue.

Plain data: nothing here imports Celery or the tasks. Each consumer app declares itself
once, in its own ``consumer.py`` module (found the way Celery finds ``tasks.py``)::

    register_consumer(Consumer(
        name="indexing",
        queue="indexing",
        handlers={"file.uploaded": handlers.index_upload, "file.deleted": handlers.drop_upload},
        concurrency=2,
    ))

``events``' ``AppConfig.ready()`` imports every installed app's ``consumer`` module and
then builds one Celery task per consumer (``events.tasks.create_consumer_task``). Every
list of consumers, queues or worker processes (the suite's workers, the Procfile, the
compose check, ``manage.py consumers``) is derived from here, so a new consumer is its
app folder plus one ``INSTALLED_APPS`` line.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from events.schemas import Envelope


@dataclass(frozen=True)
class TwoStepHandler:
    """A handler whose slow part runs outside the delivery's transaction.

    ``prepare`` does slow work (reading a file, extracting its text, talking to a mail
    server) before any row is locked, so it never holds a lock (on SQLite, the whole
    database's write lock). ``apply`` receives its result and writes inside the
    transaction that marks the delivery done. ``prepare`` may run more than once for
    one delivery, even at the same time for a duplicate message; only one ``apply``
    commits. So a ``prepare`` with side effects guards them itself, as notifications
    does by claiming its mail before sending it, and raises ``DeliveryBusy`` when
    another attempt holds the claim.
    """

    prepare: Callable[[Envelope], Any]
    apply: Callable[[Envelope, Any], None]


Handler = Callable[[Envelope], None] | TwoStepHandler


@dataclass(frozen=True)
class Forgotten:
    """Events retention is deleting: their envelopes (as stored), and the aggregates
    none of whose events is left after them (a deleted upload's whole history)."""

    events: Sequence[Envelope]
    aggregates_gone: frozenset[str]

    @property
    def event_ids(self) -> list[uuid.UUID]:
        """The ids of the events being deleted."""
        return [envelope.id for envelope in self.events]


@dataclass(frozen=True)
class Consumer:
    """One independent reaction to events, with its own queue, retries and time limits.

    A handler (a callable, or a ``TwoStepHandler``) runs inside the transaction that
    marks its delivery done, so its database writes commit together with the ledger.
    It raises ``PermanentError`` for input no retry can fix; any other exception is
    retried with exponential backoff and jitter until ``max_attempts`` tries failed.
    ``concurrency`` is how many worker processes its queue wants in deployment.
    """

    name: str
    queue: str
    handlers: Mapping[str, Handler]
    max_attempts: int = 8
    time_limit: int = 120
    soft_time_limit: int = 100
    concurrency: int = 1
    # Retention (``prune_events``): ``forget_events(pruned)`` deletes this consumer's own
    # rows for the events being pruned (``Forgotten``), in the same transaction, before
    # they go: a pruned event cannot be replayed, so its dedupe rows guard nothing.
    # ``prune_before(cutoff)`` deletes its rows older than the cut-off that no event keys
    # (a log of test calls). Each returns how many rows it deleted.
    forget_events: Callable[[Forgotten], int] | None = None
    prune_before: Callable[[dt.datetime], int] | None = None
    # The circuit breaker (``events.breaker``): one per consumer, or one per key when
    # ``breaker_key(envelope)`` says which dependency an event's delivery talks to (a
    # webhook endpoint), so one broken dependency never parks the others' deliveries.
    # Read when the event is recorded and stored on the delivery.
    breaker_key: Callable[[Envelope], str] | None = None

    @property
    def task_name(self) -> str:
        """The Celery task name, as Flower shows it: which consumer, doing what."""
        return f"{self.name}.handle_event"

    def handles(self, event_type: str) -> bool:
        """Whether this consumer subscribes to ``event_type``."""
        return event_type in self.handlers


_consumers: dict[str, Consumer] = {}


def register_consumer(consumer: Consumer) -> Consumer:
    """Add ``consumer`` to the registry (its Celery task is built by ``events``' ready())."""
    existing = _consumers.get(consumer.name)
    if existing is not None and existing != consumer:
        raise ValueError(f"consumer {consumer.name!r} is registered twice")
    _consumers[consumer.name] = consumer
    return consumer


def get_consumer(name: str) -> Consumer:
    """The consumer called ``name``; ``LookupError`` with the known names otherwise."""
    try:
        return _consumers[name]
    except KeyError:
        known = ", ".join(sorted(_consumers)) or "none"
        raise LookupError(f"unknown consumer {name!r} (known: {known})") from None


def all_consumers() -> list[Consumer]:
    """Every registered consumer, in the order their apps registered them."""
    return list(_consumers.values())


def consumers_for(event_type: str) -> list[Consumer]:
    """The consumers subscribed to ``event_type``, in registration order."""
    return [consumer for consumer in all_consumers() if consumer.handles(event_type)]


def replace_consumer(consumer: Consumer) -> Consumer:
    """Put ``consumer`` in the place of the registered consumer of the same name.

    For a variant made with ``dataclasses.replace`` (the bench's no-op handlers): the
    consumer task looks its consumer up by name per delivery, so it runs the variant.
    The queue must stay the one the task was built with.
    """
    existing = get_consumer(consumer.name)
    if consumer.queue != existing.queue:
        raise ValueError(f"consumer {consumer.name!r} cannot move from {existing.queue!r}")
    _consumers[consumer.name] = consumer
    return consumer
