"""The circuit breaker: park a failing dependency's deliveries instead of burning attempts.

One breaker per consumer, or per key of it (``Consumer.breaker_key``: webhooks key on
the endpoint, so one broken endpoint never parks another's calls). Its state is one
``Breaker`` row, written only when something fails:

- **Counting.** A transient failure under a breaker adds one to ``failures``
  (``record_failure``, an upsert), unless the same delivery failed last: one delivery
  failing again and again (a poison message) says nothing about the dependency, and
  retries until it is dead as before. Unless the handler said so: a
  ``DependencyUnavailable`` always counts, so a lone delivery in a quiet consumer
  opens the breaker through a long outage and parks instead of going dead. A ``PermanentError`` (bad input) never counts; a
  busy release neither.
- **Open.** At ``EVENTS_BREAKER_FAILURES`` consecutive failures the breaker opens (logged).
  Its deliveries **park**: the claim statement refuses them (``CLAIM_HOLD_SQL``), with
  no attempt counted, the delivery left waiting with no message out; the relay leaves
  them out of its due and expired-lease steps (``OPEN_BREAKER_SQL``). A delivery that
  fails while its breaker is open parks too, its attempt recorded but never its last:
  an outage longer than the retry schedule leaves nothing dead.
- **Probe.** Every ``EVENTS_BREAKER_PROBE_SECONDS`` the relay sends one parked delivery,
  the probe (``probe_delivery_id``), which the claim lets through.
- **Close.** A success under a breaker deletes its row (logged when it was open), in the
  finishing transaction. Only when the claim saw a row: a consumer that never failed
  pays nothing per delivery. The parked deliveries are due with no message out, so the
  relay's next pass sends them all.
- **Operators** may close an open breaker, or have the relay probe now rather than at
  ``probe_at`` (``events.control.close_breaker`` and ``probe_breaker``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import connection

from events.db import now_plus_seconds_sql, now_sql
from events.models import Breaker
from events.registry import Consumer

logger = logging.getLogger(__name__)

# The claim's hold, in the claim statement itself (no round trip per delivery): not
# paused, and no open breaker over this delivery unless it is that breaker's probe.
CLAIM_HOLD_SQL = """
       AND NOT EXISTS (SELECT 1 FROM events_consumerstate
                        WHERE name = %s AND paused)
       AND NOT EXISTS (SELECT 1 FROM events_breaker b
                        WHERE b.consumer = %s AND b.breaker_key = events_delivery.breaker_key
                          AND b.opened_at IS NOT NULL
                          AND (b.probe_delivery_id IS NULL
                               OR b.probe_delivery_id <> events_delivery.id))"""
# Whether the claim must look at the breaker when the attempt ends (a row exists).
CLAIM_BREAKER_ROW_SQL = """EXISTS (SELECT 1 FROM events_breaker b
                 WHERE b.consumer = %s AND b.breaker_key = events_delivery.breaker_key)"""
# For the relay's queries: the delivery is under an open breaker.
OPEN_BREAKER_SQL = """
       AND NOT EXISTS (SELECT 1 FROM events_breaker b
                        WHERE b.consumer = events_delivery.consumer
                          AND b.breaker_key = events_delivery.breaker_key
                          AND b.opened_at IS NOT NULL)"""

# A delivery that failed last time too does not count again: a poison message alone
# must not open its consumer's breaker (and then never go dead while it stays open).
FAILURE_SQL = """
    INSERT INTO events_breaker (consumer, breaker_key, failures, last_failed_delivery_id)
    VALUES (%s, %s, 1, %s)
    ON CONFLICT (consumer, breaker_key) DO UPDATE
       SET failures = events_breaker.failures
                      + CASE WHEN %s THEN 1
                             WHEN events_breaker.last_failed_delivery_id
                                  = excluded.last_failed_delivery_id
                             THEN 0 ELSE 1 END,
           last_failed_delivery_id = excluded.last_failed_delivery_id
    RETURNING id, failures, opened_at, probe_delivery_id"""
OPEN_SQL = """
    UPDATE events_breaker SET opened_at = {now}, probe_at = {probe_at}, probe_delivery_id = NULL
     WHERE id = %s AND opened_at IS NULL"""
PROBE_FAILED_SQL = """
    UPDATE events_breaker SET probe_at = {probe_at}, probe_delivery_id = NULL
     WHERE id = %s AND probe_delivery_id = %s"""
CLOSE_SQL = (
    "DELETE FROM events_breaker WHERE consumer = %s AND breaker_key = %s RETURNING opened_at"
)
DUE_PROBES_SQL = """
    SELECT id, consumer, breaker_key FROM events_breaker
     WHERE opened_at IS NOT NULL AND probe_at <= {now} AND consumer IN ({consumers})"""
PROBE_CANDIDATE_SQL = """
    SELECT id FROM events_delivery
     WHERE state IN ('pending', 'retrying') AND enqueued_at IS NULL
       AND consumer = %s AND breaker_key = %s
     ORDER BY COALESCE(retry_at, created_at), id
     LIMIT 1"""
TAKE_PROBE_SQL = """
    UPDATE events_breaker SET probe_at = {probe_at}, probe_delivery_id = %s
     WHERE id = %s AND opened_at IS NOT NULL AND probe_at <= {now}"""


def describe_key(consumer: str, key: str) -> str:
    """``notifications`` or ``webhook_calls[7]``: a breaker, as logs and pages name it."""
    return f"{consumer}[{key}]" if key else consumer


def record_failure(
    *, consumer: Consumer, key: str, delivery_id: int, dependency_down: bool = False
) -> bool:
    """Count a transient failure under ``consumer``'s breaker ``key``; whether it is open.

    Opens it at ``EVENTS_BREAKER_FAILURES``; a failed probe schedules the next one. The
    same delivery failing again counts only when ``dependency_down`` (the handler raised
    ``DependencyUnavailable``).
    """
    probe_at = now_plus_seconds_sql()
    with connection.cursor() as cursor:
        cursor.execute(FAILURE_SQL, [consumer.name, key, delivery_id, dependency_down])
        breaker_id, failures, opened_at, probe_delivery_id = cursor.fetchone()
        if opened_at is not None:
            if probe_delivery_id == delivery_id:
                cursor.execute(
                    PROBE_FAILED_SQL.format(probe_at=probe_at),
                    [settings.EVENTS_BREAKER_PROBE_SECONDS, breaker_id, delivery_id],
                )
                logger.warning(
                    "breaker %s: probe (delivery %s) failed; still open",
                    describe_key(consumer.name, key),
                    delivery_id,
                )
            return True
        if failures < settings.EVENTS_BREAKER_FAILURES:
            return False
        cursor.execute(
            OPEN_SQL.format(now=now_sql(), probe_at=probe_at),
            [settings.EVENTS_BREAKER_PROBE_SECONDS, breaker_id],
        )
        if cursor.rowcount:
            logger.error(
                "breaker %s opened after %d consecutive failures: its deliveries park, "
                "one probes every %g s",
                describe_key(consumer.name, key),
                failures,
                settings.EVENTS_BREAKER_PROBE_SECONDS,
            )
    return True


def record_success(*, consumer: Consumer, key: str) -> None:
    """Close (delete) the breaker after a success under it; its parked deliveries are due."""
    with connection.cursor() as cursor:
        cursor.execute(CLOSE_SQL, [consumer.name, key])
        row = cursor.fetchone()
    if row is not None and row[0] is not None:
        logger.warning(
            "breaker %s closed: a delivery succeeded; its parked deliveries are sent now",
            describe_key(consumer.name, key),
        )


def is_open(*, consumer: str, key: str) -> bool:
    """Whether ``consumer``'s breaker ``key`` is open."""
    return Breaker.objects.filter(consumer=consumer, key=key, opened_at__isnull=False).exists()


def take_due_probes(consumers: Sequence[Consumer]) -> list[int]:
    """The deliveries to send as probes now: one per open breaker whose probe is due.

    Each is recorded as its breaker's probe (so the claim lets it through) and the next
    probe scheduled, by an update that only one relay can win.
    """
    names = [consumer.name for consumer in consumers]
    if not names:
        return []
    probes = []
    with connection.cursor() as cursor:
        cursor.execute(
            DUE_PROBES_SQL.format(now=now_sql(), consumers=", ".join(["%s"] * len(names))), names
        )
        for breaker_id, consumer, key in cursor.fetchall():
            cursor.execute(PROBE_CANDIDATE_SQL, [consumer, key])
            row = cursor.fetchone()
            if row is None:
                continue  # nothing parked: the next delivery to arrive parks and is probed
            cursor.execute(
                TAKE_PROBE_SQL.format(probe_at=now_plus_seconds_sql(), now=now_sql()),
                [settings.EVENTS_BREAKER_PROBE_SECONDS, row[0], breaker_id],
            )
            if cursor.rowcount:
                logger.info(
                    "breaker %s: probing with delivery %s", describe_key(consumer, key), row[0]
                )
                probes.append(row[0])
    return probes


@dataclass(frozen=True)
class BreakerState:
    """A breaker as operators see it: open since ``opened_at``, or still counting
    ``failures`` (``opened_at`` empty); the relay sends its next probe at ``probe_at``, and
    ``probe_delivery_id`` is the probe sent last, until it fails."""

    consumer: str
    key: str
    failures: int
    opened_at: dt.datetime | None
    probe_at: dt.datetime | None = None
    probe_delivery_id: int | None = None

    @property
    def name(self) -> str:
        """``notifications`` or ``webhook_calls[7]`` (``describe_key``)."""
        return describe_key(self.consumer, self.key)

    @classmethod
    def of(cls, breaker: Breaker) -> BreakerState:
        """The state of one ``Breaker`` row."""
        return cls(
            breaker.consumer,
            breaker.key,
            breaker.failures,
            breaker.opened_at,
            breaker.probe_at,
            breaker.probe_delivery_id,
        )


def open_breakers() -> list[BreakerState]:
    """Every open breaker, oldest first."""
    opened = Breaker.objects.filter(opened_at__isnull=False).order_by("opened_at")
    return [BreakerState.of(b) for b in opened]


def all_breakers() -> list[BreakerState]:
    """Every breaker with a row: the open ones (oldest first), then those counting failures."""
    counting = Breaker.objects.filter(opened_at__isnull=True).order_by("consumer", "key")
    return open_breakers() + [BreakerState.of(b) for b in counting]
