"""The relay: publish what is due, and find and resend every message the broker lost.

Beat runs a pass every ``EVENTS_RELAY_INTERVAL_SECONDS`` (one second by default); one
pass at a time holds the relay lock (a Redis lock). A pass does four things, each a
short query through its own partial index (``Delivery.Meta.indexes``) on the database
clock, with no transaction held while it talks to Redis:

1. **Due, with no message out** (``enqueued_at`` empty): a retry, a busy release or a
   wait for an upgrade whose ``retry_at`` has come, and a fresh delivery whose on-commit
   publish did not happen within ``EVENTS_PUBLISH_GRACE_SECONDS`` (the web process died,
   Redis was down). Published without a countdown, oldest first.
2. **An expired lease** with no message sent since it expired: the attempt died (SIGKILL,
   out of memory, a hard time limit, a lost host). Published again.
3. **Lost messages** (``heal_lost_messages``): the broker holds fewer messages for a
   queue than the ledger says are out. Redis restarted from an older snapshot or empty,
   a failover to a replica that lagged, a purged queue, ``FLUSHALL``, a relay or web
   process that died between its send and its mark: all look the same from here. The
   oldest deliveries that have waited, sent, longer than the grace are sent again, as
   many as are missing. A delivery that merely waits in a long queue is counted there
   and never sent twice.
4. **Retired consumers** (``retire_orphans``): open deliveries of a consumer that no
   process has declared for ``EVENTS_RETIRED_CONSUMER_GRACE_SECONDS`` go dead with
   ``consumer no longer registered``; they can be replayed if it comes back.

A paused consumer (``events.control``) is left out of steps 1 to 3: its parked
deliveries wait with no message out until it is resumed, and the next pass sends them.
Steps 1 and 2 also leave out deliveries under an open breaker (``events.breaker``),
except one probe per breaker every ``EVENTS_BREAKER_PROBE_SECONDS``; once it closes,
they are due and the next pass sends them.

``docs/architecture.md`` ("What the broker can lose") says what each loss looks like
and how long each takes to heal.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Q
from django.db.models.functions import Now
from redis.exceptions import LockError

from events.breaker import OPEN_BREAKER_SQL, take_due_probes
from events.control import running_consumers
from events.db import now_sql, seconds_ago_sql
from events.models import ConsumerState, Delivery
from events.outbox import BROKER_ERRORS, broker_client, publish_deliveries_now
from events.registry import Consumer, all_consumers

logger = logging.getLogger(__name__)

ORPHAN_REASON = "consumer no longer registered"
RELAY_LOCK = "events:relay"
# A pass that takes longer than this (a broker that hangs) lets the next one start.
RELAY_LOCK_SECONDS = 60
# When the counts say a message is missing, look at the reserved messages once more
# after this long: a message a worker has just popped is in neither list for an instant.
RECOUNT_PAUSE_SECONDS = 0.05

WAITING = "state IN ('pending', 'retrying')"
# Literal states, not parameters: SQLite uses a partial index only for a query whose
# WHERE clause visibly implies the index's.
DUE_UNSENT_SQL = f"""
    SELECT id FROM events_delivery
     WHERE {WAITING} AND enqueued_at IS NULL
       AND (retry_at <= {{now}} OR (retry_at IS NULL AND created_at < {{grace_ago}}))
       AND consumer IN ({{consumers}}){OPEN_BREAKER_SQL}
     LIMIT %s"""
EXPIRED_LEASE_SQL = f"""
    SELECT id FROM events_delivery
     WHERE state = 'running' AND lease_expires_at < {{now}}
       AND (enqueued_at IS NULL OR enqueued_at < lease_expires_at)
       AND consumer IN ({{consumers}}){OPEN_BREAKER_SQL}
     LIMIT %s"""
SENT_COUNT_SQL = f"""
    SELECT consumer, COUNT(*) FROM events_delivery
     WHERE {WAITING} AND enqueued_at IS NOT NULL AND enqueued_at < %s
       AND consumer IN ({{consumers}}){{reserved}}
     GROUP BY consumer"""
OLDEST_SENT_SQL = f"""
    SELECT enqueued_at, id FROM events_delivery
     WHERE {WAITING} AND enqueued_at IS NOT NULL AND enqueued_at < {{grace_ago}}
       AND consumer = %s{{not_reserved}}
     ORDER BY enqueued_at
     LIMIT %s"""


@dataclass(frozen=True)
class RelayResult:
    """What a relay pass did: deliveries sent (``healed`` of them lost by the broker),
    deliveries dead-lettered as retired, and whether the broker failed."""

    published: int
    broker_failed: bool
    healed: int = 0
    retired: int = 0


def relay_outbox(*, batch_size: int | None = None) -> RelayResult:
    """One relay pass (see the module docstring); safe to start anywhere, any number of times."""
    batch_size = batch_size or settings.EVENTS_RELAY_BATCH_SIZE
    consumers = all_consumers()
    published = healed = 0
    housekeeping_due = False
    try:
        with broker_client() as client, _relay_lock(client) as held:
            if not held:
                return RelayResult(0, broker_failed=False)
            # Both at most ten times per grace: a pass every second must not write every second.
            housekeeping_due = _now_and_then(
                "retire", settings.EVENTS_RETIRED_CONSUMER_GRACE_SECONDS / 10
            )
            if housekeeping_due:
                declare_consumers(consumer.name for consumer in consumers)
            # A paused consumer's deliveries wait, parked, until it is resumed.
            running = running_consumers(consumers)
            published, complete = publish_due(running, batch_size=batch_size)
            if complete and client is not None:
                healed = heal_lost_messages(client, running)
    except BROKER_ERRORS as exc:
        logger.warning("relay: broker unavailable (%s); trying again next pass", exc)
        return RelayResult(published + healed, broker_failed=True, healed=healed)
    retired = retire_orphans(consumers) if housekeeping_due else 0
    return RelayResult(published + healed, broker_failed=False, healed=healed, retired=retired)


@contextmanager
def _relay_lock(client: Any) -> Iterator[bool]:
    """Hold the relay lock, or yield ``False`` while another pass holds it.

    Without a Redis client (an in-memory transport in a script) there is one process.
    If Redis loses the lock mid-pass, two passes may overlap: at worst a delivery is sent
    twice, which its claim absorbs.
    """
    if client is None:
        yield True
        return
    lock = client.lock(RELAY_LOCK, timeout=RELAY_LOCK_SECONDS, blocking=False)
    if not lock.acquire():
        yield False
        return
    try:
        yield True
    finally:
        try:
            lock.release()
        except LockError:  # expired or lost with the broker's data: nothing left to free
            logger.debug("relay lock already gone")


# ------------------------------------------------------------------------------
# 1 and 2: due deliveries and expired leases
# ------------------------------------------------------------------------------
def publish_due(consumers: Sequence[Consumer], *, batch_size: int) -> tuple[int, bool]:
    """Publish every due delivery with no message out and every expired lease.

    Returns how many were sent and whether all were (``False``: the broker failed and
    the rest waits for the next pass).
    """
    total = 0
    names = [consumer.name for consumer in consumers]
    probes = take_due_probes(consumers)
    while True:
        ids = probes + due_delivery_ids(names, limit=batch_size)
        probes = []
        if not ids:
            return total, True
        batch = sorted(
            Delivery.objects.filter(pk__in=ids).select_related("event").defer("event__payload"),
            key=lambda delivery: (delivery.retry_at or delivery.created_at, delivery.pk),
        )
        sent = publish_deliveries_now(batch)
        total += len(sent)
        if len(sent) < len(batch):
            return total, False
        if len(ids) < batch_size:
            return total, True


def due_delivery_ids(consumers: Sequence[str], *, limit: int) -> list[int]:
    """Up to ``limit`` of each: due deliveries with no message out, and expired leases."""
    return _select_ids(DUE_UNSENT_SQL, consumers, limit) + _select_ids(
        EXPIRED_LEASE_SQL, consumers, limit
    )


def _select_ids(template: str, consumers: Sequence[str], limit: int, *params: Any) -> list[int]:
    if not consumers:
        return []
    sql = template.format(
        now=now_sql(), grace_ago=seconds_ago_sql(), consumers=", ".join(["%s"] * len(consumers))
    )
    grace = [settings.EVENTS_PUBLISH_GRACE_SECONDS] if "{grace_ago}" in template else []
    with connection.cursor() as cursor:
        cursor.execute(sql, [*grace, *consumers, *params, limit])
        return [row[0] for row in cursor.fetchall()]


# ------------------------------------------------------------------------------
# 3: messages the broker lost
# ------------------------------------------------------------------------------
def heal_lost_messages(client: Any, consumers: Sequence[Consumer]) -> int:
    """Send again, oldest first, as many sent deliveries as each queue is missing.

    A queue is missing messages when it holds fewer than the ledger's deliveries that
    wait with a message out (sent before this count began), less those that workers
    have reserved (Redis's ``unacked`` hash). Messages in flight make the count err on
    the safe side: a message sent meanwhile is in the queue but not yet counted in the
    ledger, a delivery a worker takes meanwhile leaves the ledger's count. Returns how
    many deliveries were sent again.
    """
    by_queue: dict[str, list[str]] = defaultdict(list)
    for consumer in consumers:
        by_queue[consumer.queue].append(consumer.name)
    held_for = _longest_hold(consumers)
    started = _database_now()
    queued, reserved = _broker_counts(client, by_queue, held_for)
    deficits = _deficits(by_queue, queued, reserved, started)
    if not deficits:
        return 0
    # A worker may hold a message it has popped and not yet recorded as reserved.
    time.sleep(RECOUNT_PAUSE_SECONDS)
    reserved |= _reserved_delivery_ids(client, held_for)
    deficits = _deficits(by_queue, queued, reserved, started)
    healed = 0
    for queue, missing in deficits.items():
        ids = _oldest_sent(by_queue[queue], missing, reserved)
        if not ids:
            continue
        logger.warning(
            "relay: queue %r holds %d fewer messages than the ledger has out; sending %d again",
            queue,
            missing,
            len(ids),
        )
        batch = list(
            Delivery.objects.filter(pk__in=ids).select_related("event").defer("event__payload")
        )
        healed += len(publish_deliveries_now(batch))
    return healed


def _database_now() -> Any:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {now_sql()}", [])
        return cursor.fetchone()[0]


def _longest_hold(consumers: Sequence[Consumer]) -> dict[str, float]:
    """Queue → the longest a live worker holds one of its messages unacknowledged.

    The bound the worker's startup check puts under the visibility timeout
    (``config.checks``): the prefetch multiplier times the time limit, plus the lease
    margin. A reserved message older than that belongs to a worker that is gone (killed,
    or a warm shutdown that did not give it back); Redis hands it out again only after
    the visibility timeout, so the relay counts it as lost instead.
    """
    from celery import current_app

    multiplier = max(1, int(current_app.conf.worker_prefetch_multiplier or 1))
    hold: dict[str, float] = {}
    for consumer in consumers:
        seconds = multiplier * consumer.time_limit + settings.EVENTS_LEASE_MARGIN_SECONDS
        hold[consumer.queue] = max(hold.get(consumer.queue, 0), seconds)
    return hold


def _broker_counts(
    client: Any, by_queue: dict[str, list[str]], held_for: dict[str, float]
) -> tuple[Counter[str], set[int]]:
    """Messages waiting in each queue and the delivery ids live workers reserved, at once."""
    queues = list(by_queue)
    with client.pipeline(transaction=True) as pipe:
        for queue in queues:
            for key in _queue_keys(queue):
                pipe.llen(key)
        _read_reserved(pipe)
        replies = pipe.execute()
    waiting: Counter[str] = Counter()
    position = 0
    for queue in queues:
        keys = len(_queue_keys(queue))
        waiting[queue] = sum(replies[position : position + keys])
        position += keys
    return waiting, _live_reserved(*replies[-3:], held_for=held_for)


# kombu's Redis transport: a queue is one list per priority step ("name", then
# "name\x06\x16<step>"); messages taken but not acknowledged wait in one hash, by
# delivery tag, and the time each was taken (the worker's clock) in a sorted set.
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


def _queue_keys(queue: str) -> list[str]:
    return [queue] + [f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS if step]


def _read_reserved(pipe: Any) -> None:
    pipe.time()
    pipe.hgetall(UNACKED_KEY)
    pipe.zrange(UNACKED_INDEX_KEY, 0, -1, withscores=True)


def _reserved_delivery_ids(client: Any, held_for: dict[str, float]) -> set[int]:
    with client.pipeline(transaction=True) as pipe:
        _read_reserved(pipe)
        return _live_reserved(*pipe.execute(), held_for=held_for)


def _live_reserved(
    server_time: tuple[int, int],
    unacked: dict[bytes, bytes],
    taken_at: list[tuple[bytes, float]],
    *,
    held_for: dict[str, float],
) -> set[int]:
    """The delivery ids of reserved messages young enough to belong to a live worker.

    Ages compare the worker's clock (when it took the message) with the Redis server's:
    hosts in sync to within seconds, against a bound of minutes.
    """
    now = server_time[0] + server_time[1] / 1_000_000
    taken = dict(taken_at)
    ids: set[int] = set()
    for tag, raw in unacked.items():
        try:
            message, _exchange, queue = json.loads(raw)
            _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
            delivery_id = int(kwargs["delivery_id"])
        except (ValueError, KeyError, TypeError, IndexError):
            continue  # not one of ours (a control message, another app's task)
        if now - taken.get(tag, now) < held_for.get(queue, 0):
            ids.add(delivery_id)
    return ids


def _deficits(
    by_queue: dict[str, list[str]], queued: Counter[str], reserved: set[int], started: Any
) -> dict[str, int]:
    """Queue → how many messages it is missing, by the ledger; only queues missing some."""
    out = _sent_counts([name for names in by_queue.values() for name in names], started)
    held = _sent_counts(list(out), started, among=reserved) if reserved and out else Counter()
    deficits = {}
    for queue, names in by_queue.items():
        expected = sum(out[name] - held[name] for name in names)
        if expected > queued[queue]:
            deficits[queue] = expected - queued[queue]
    return deficits


def _sent_counts(
    consumers: Sequence[str], before: Any, *, among: set[int] | None = None
) -> Counter[str]:
    """Consumer → deliveries waiting with a message out sent before ``before`` (within ``among``)."""
    if not consumers:
        return Counter()
    reserved = ""
    params: list[Any] = [before, *consumers]
    if among is not None:
        reserved = f" AND id IN ({', '.join(['%s'] * len(among))})"
        params.extend(sorted(among))
    sql = SENT_COUNT_SQL.format(consumers=", ".join(["%s"] * len(consumers)), reserved=reserved)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return Counter(dict(cursor.fetchall()))


def _oldest_sent(consumers: Sequence[str], missing: int, reserved: set[int]) -> list[int]:
    """The ids of the ``missing`` oldest deliveries sent longer than the grace ago."""
    not_reserved = f" AND id NOT IN ({', '.join(['%s'] * len(reserved))})" if reserved else ""
    sql = OLDEST_SENT_SQL.format(grace_ago=seconds_ago_sql(), not_reserved=not_reserved)
    candidates: list[tuple[Any, int]] = []
    with connection.cursor() as cursor:
        for name in consumers:
            cursor.execute(
                sql, [settings.EVENTS_PUBLISH_GRACE_SECONDS, name, *sorted(reserved), missing]
            )
            candidates.extend(cursor.fetchall())
    return [pk for _, pk in sorted(candidates)][:missing]


# ------------------------------------------------------------------------------
# 4: retired consumers
# ------------------------------------------------------------------------------
# What this process did last, and when (time.monotonic()), for ``_now_and_then``.
_last_done: dict[str, float] = {}


def declare_consumers(names: Iterable[str]) -> None:
    """Record that this process runs code registering ``names``, on the database clock."""
    names = list(names)
    existing = set(ConsumerState.objects.filter(name__in=names).values_list("name", flat=True))
    ConsumerState.objects.bulk_create(
        [ConsumerState(name=name) for name in names if name not in existing],
        ignore_conflicts=True,
    )
    ConsumerState.objects.filter(name__in=names).update(declared_at=Now())


def retire_orphans(consumers: Sequence[Consumer]) -> int:
    """Dead-letter the open deliveries of consumers nobody has declared for the grace.

    Only deliveries older than the grace too: one that newer code recorded a moment ago
    for a consumer it added waits until that code's relay or workers declare it.
    """
    registered = [consumer.name for consumer in consumers]
    grace = settings.EVENTS_RETIRED_CONSUMER_GRACE_SECONDS
    open_elsewhere = set(
        Delivery.objects.filter(state__in=Delivery.OPEN_STATES)
        .exclude(consumer__in=registered)
        .values_list("consumer", flat=True)
        .distinct()
    )
    if not open_elsewhere:
        return 0
    cutoff = Now() - dt.timedelta(seconds=grace)
    declared_lately = set(
        ConsumerState.objects.filter(name__in=open_elsewhere, declared_at__gte=cutoff).values_list(
            "name", flat=True
        )
    )
    retired = sorted(open_elsewhere - declared_lately)
    if not retired:
        return 0
    count = Delivery.objects.filter(
        Q(consumer__in=retired), state__in=Delivery.OPEN_STATES, created_at__lt=cutoff
    ).update(
        state=Delivery.State.DEAD,
        last_error=ORPHAN_REASON,
        retry_at=None,
        lease_expires_at=None,
        updated_at=Now(),
    )
    if count:
        logger.error("%d deliveries dead: %s (%s)", count, ORPHAN_REASON, ", ".join(retired))
    return count


def _now_and_then(key: str, every: float) -> bool:
    """Whether this process last did ``key`` at least ``every`` seconds ago (then: now)."""
    now = time.monotonic()
    if now - _last_done.get(key, -every) < every:
        return False
    _last_done[key] = now
    return True
