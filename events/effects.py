"""Claiming an external side effect (a mail, an HTTP call) so that one attempt does it.

A consumer whose handler talks to the outside world (a mail server, a webhook receiver)
cannot roll that back with its transaction. It keeps one row per effect in a claim table
of its own, keyed by what makes the effect unique (the event and the recipient, the
event and the endpoint: a unique constraint on those fields), and calls
``claim_effect`` before doing it. The row must have:

* ``state``, a short text field: ``"claimed"`` (``CLAIMED``) while an attempt holds the
  effect; the consumer's own finished states (sent, skipped, delivered, ...) once it is
  done for good; any other value (failed, rejected, ...) means "may be tried again";
* ``claimed_at``, a nullable datetime: when the attempt now holding it claimed it;
* optionally a nullable datetime named by ``not_before``: a row that may be tried again
  is not taken over before that time (a receiver's ``Retry-After``).

What ``claim_effect`` guarantees
--------------------------------
* **One attempt at a time.** Inserting the row as ``claimed`` decides a race between
  duplicate messages: the unique key lets one insert through. Taking over an existing
  row is one conditional ``UPDATE`` whose condition is the row being takeable, so of two
  attempts that both saw it takeable only the first changes it; the second finds a fresh
  claim.
* **Finished means finished.** A row in one of ``finished`` states is returned as it is:
  the effect is never repeated for it, whatever retries, duplicates or replays come.
* **A live attempt keeps its claim.** A claim younger than the consumer's lease (its
  hard time limit plus ``EVENTS_LEASE_MARGIN_SECONDS``, the lease ``events.delivery``
  takes for the delivery itself) raises ``DeliveryBusy``: look again later, without
  counting a failed attempt. After the hard time limit Celery has killed the attempt,
  so a claim older than the lease belongs to a dead attempt and is taken over.
* **One clock.** Every age is measured on the database's clock, read once per try and
  compared in SQL, as the kernel measures its leases: the hosts' clocks may disagree
  with each other and with the database, the database agrees with itself.

The crash window
----------------
This is at-least-once for the external effect, not exactly-once. A crash (worker killed,
machine lost, database gone) after the effect happened and before the consumer marked
the row finished leaves it ``claimed``; once the claim is stale the next attempt takes
it over and does the effect again. Consumers make that repeat recognisable (the same
``Message-ID``, the same ``webhook-id``) so the other side can drop it. Nothing closes
the window short of the other side taking part in the transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

from django.db import IntegrityError, connection, transaction
from django.db.models import Model, Q
from django.utils.dateparse import parse_datetime

from events.db import now_sql, one_or_none
from events.delivery import lease_seconds
from events.exceptions import DeliveryBusy, TransientError
from events.registry import Consumer

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Model)

# The state of a row an attempt holds; part of the contract with the consumer's table.
CLAIMED = "claimed"
# How soon a duplicate that found the effect claimed looks again: the holder is usually
# done by then; if it died, the look after the claim goes stale takes over.
BUSY_RETRY_SECONDS = 10.0
# A row can vanish (released by its holder) or change between the failed insert and
# the read or update that follow it: try the whole claim a few times.
_CLAIM_TRIES = 3


def claim_effect(
    model: type[M],
    *,
    key: Mapping[str, Any],
    consumer: Consumer,
    finished: Collection[str],
    fields: Mapping[str, Any] | None = None,
    not_before: str | None = None,
    what: str = "this effect",
) -> M:
    """Take the right to perform the side effect identified by ``key`` in ``model``.

    ``key`` holds the values of the fields the table is unique on (for example
    ``{"event_id": ..., "recipient": ...}``); ``consumer`` is the consumer doing the
    effect, whose lease is the stale window; ``finished`` lists the states after which
    the effect is never done again; ``fields`` are written on the row when it is
    inserted or taken over; ``not_before`` names the row's field that holds a time
    before which a row to try again is not taken over; ``what`` names the effect in
    messages ("the mail to ...").

    Returns the row: in state ``CLAIMED`` with ``claimed_at`` set, now held by this
    attempt, which performs the effect and then marks it; or in one of the
    ``finished`` states, when there is nothing left to do. Raises ``DeliveryBusy``
    while another attempt's claim is fresh or ``not_before`` has not come, and
    ``TransientError`` when the row keeps changing under it. See the module docstring
    for the guarantees and the crash window.
    """
    lease = lease_seconds(consumer)
    values = dict(fields or {})
    for _ in range(_CLAIM_TRIES):
        now = database_now()
        try:
            with transaction.atomic():
                return model._default_manager.create(**key, **values, state=CLAIMED, claimed_at=now)
        except IntegrityError:
            pass  # the row exists: look at it
        existing = one_or_none(model._default_manager.filter(**key))
        if existing is None:
            continue  # released since the insert failed: try again
        if existing.state in finished:
            return existing
        with transaction.atomic():
            taken = (
                model._default_manager.filter(pk=existing.pk)
                .filter(_takeable(now, lease, finished, not_before))
                .update(**values, state=CLAIMED, claimed_at=now)
            )
        if taken:
            if existing.state == CLAIMED:
                # Its attempt died, maybe after doing the effect: this is the crash window.
                logger.warning(
                    "%s took over the stale claim of %s (claimed at %s)",
                    consumer.name,
                    what,
                    existing.claimed_at,
                )
            existing.refresh_from_db()
            return existing
        wait = _wait(existing, now, lease, not_before, what)
        if wait is not None:
            raise DeliveryBusy(wait[0], retry_after=wait[1])
        # Neither takeable nor busy as read: it changed in between. Look again.
    raise TransientError(f"could not claim {what}: too much contention")


def database_now() -> dt.datetime:
    """The database's clock now, as an aware datetime (the kernel's leases use this clock)."""
    with connection.cursor() as cursor:
        # With a (here empty) parameter list both backends turn now_sql()'s %% into %.
        cursor.execute(f"SELECT {now_sql()}", [])
        (value,) = cursor.fetchone()
    if isinstance(value, str):  # SQLite: text in UTC, without a zone
        value = parse_datetime(value)
    if value is None:
        raise RuntimeError("the database did not tell its time")
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value


def _takeable(
    now: dt.datetime, lease: float, finished: Collection[str], not_before: str | None
) -> Q:
    """The rows an attempt may take over at ``now``: a stale claim, or one to try again."""
    stale_claim = Q(state=CLAIMED) & (
        Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - dt.timedelta(seconds=lease))
    )
    try_again = ~Q(state__in=[CLAIMED, *finished])
    if not_before is not None:
        try_again &= Q(**{f"{not_before}__isnull": True}) | Q(**{f"{not_before}__lte": now})
    return stale_claim | try_again


def _wait(
    row: Model, now: dt.datetime, lease: float, not_before: str | None, what: str
) -> tuple[str, float] | None:
    """Why ``row`` (as read) could not be taken over at ``now``, and for how long; or ``None``."""
    claimed_at = row.claimed_at  # type: ignore[attr-defined]
    if row.state == CLAIMED and claimed_at is not None:  # type: ignore[attr-defined]
        age = (now - claimed_at).total_seconds()
        if age < lease:
            return (
                f"another attempt holds {what} (claimed {age:.0f} s ago; "
                f"taken over after {lease:g} s)",
                max(0.0, min(BUSY_RETRY_SECONDS, lease - age + 1)),
            )
    until = getattr(row, not_before) if not_before is not None else None
    if row.state != CLAIMED and until is not None and until > now:  # type: ignore[attr-defined]
        wait = (until - now).total_seconds()
        return f"{what} is not due for {wait:.0f} s (the other side asked to retry later)", wait
    return None
