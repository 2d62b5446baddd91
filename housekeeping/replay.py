"""Replaying stored events to consumers: select, reset, re-deliver, in bounded chunks.

Used by ``replay_events`` and by the two delivery actions in admin. It only writes the
ledger and calls the public delivery functions of ``events.outbox`` and ``events.delivery``
(``publish_deliveries_now`` and ``run_delivery``), so a replayed delivery takes the very
path a fresh one takes: the ledger lock, the dedupe on ``done``, retries and dead-lettering.

What happens to one (event, consumer) pair, where the consumer handles the event's type:

* no delivery row yet (a consumer added after the event was stored): one is created
  ``pending`` -- the backfill;
* ``pending`` or ``retrying``: re-sent as it is (a duplicate message is absorbed by the
  ledger, so re-sending a delivery that is merely slow is harmless);
* ``dead``: reset to ``pending`` and re-sent;
* ``done``: skipped, unless ``force``, which resets it to ``pending`` and re-sends it.

``dead_only`` narrows that to dead deliveries (no backfill, nothing open); ``force``
still adds done ones. ``error_contains`` narrows it to deliveries whose ``last_error``
contains a text (case-insensitive), so it never backfills either. A reset keeps
``attempts`` and ``last_error`` and every ``DeliveryAttempt`` row: the history of what
happened stays readable. Because attempts
are kept, a replayed delivery that had used up its consumer's ``max_attempts`` gets one
more try and goes dead again at once if that try fails.

Forced replays are safe because every handler is idempotent: the audit log dedupes by
event id, the index is updated in place (and never resurrects a deleted file),
notifications dedupe by (event, recipient). Re-running a handler for an event it has
already handled produces no second effect.

Memory stays flat however large the event log: events are read by keyset on
``(occurred_at, id)``, ``chunk_size`` at a time, with the payload deferred, and each chunk
takes a fixed number of queries; only counters are kept between chunks.
"""

from __future__ import annotations

import datetime as dt
import socket
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from django.db import transaction
from django.db.models import Exists, F, OuterRef, QuerySet
from django.db.models.functions import Now

from events import record_event
from events.delivery import claim_batch, run_claimed, run_delivery
from events.models import Delivery, Event
from events.outbox import publish_deliveries_now
from events.registry import Consumer, all_consumers, get_consumer
from housekeeping.controls import Operator
from housekeeping.events import OPERATOR_REPLAY
from housekeeping.progress import ProgressCallback
from housekeeping.selectors import events_in_chunks

DEFAULT_CHUNK_SIZE = 500
# How long the relay leaves a chunk to ``--inline`` before publishing what is still open.
INLINE_HOLD = dt.timedelta(minutes=5)

# The fields of an event that replaying needs; the payload is read by the handler only.
_EVENT_FIELDS = ("id", "type", "occurred_at", "correlation_id")


class Mode(StrEnum):
    """How selected deliveries are re-delivered."""

    PUBLISH = "publish"  # a message on the consumer's queue, for its workers
    INLINE = "inline"  # the handler runs in this process, through the same ledger
    DRY_RUN = "dry-run"  # nothing is written or published; only counted


class Action(StrEnum):
    """What replay does with one (event, consumer) pair."""

    BACKFILL = "backfill"
    RESEND = "resend"
    RESET_DEAD = "reset_dead"
    RESET_DONE = "reset_done"
    SKIP_DONE = "skip_done"


@dataclass(frozen=True)
class ReplaySelection:
    """Which stored events to replay to which consumers (``replay_events`` builds it
    from its command line, checking every name and value)."""

    consumers: tuple[str, ...]
    types: tuple[str, ...] = ()
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    event_ids: tuple[uuid.UUID, ...] = ()
    upload_ids: tuple[int, ...] = ()
    dead_only: bool = False
    force: bool = False
    # Only deliveries whose last error contains this text (case-insensitive); "": any.
    error_contains: str = ""

    def to_json(self) -> dict[str, object]:
        """The selection as the audit log keeps it (``record_replay``)."""
        return {
            "consumers": list(self.consumers),
            "types": list(self.types),
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "event_ids": [str(event_id) for event_id in self.event_ids],
            "upload_ids": list(self.upload_ids),
            "dead_only": self.dead_only,
            "force": self.force,
            "error_contains": self.error_contains,
        }

    def handled_types(self) -> list[str]:
        """The event types to read: those asked for that a selected consumer handles."""
        handled = {t for name in self.consumers for t in get_consumer(name).handlers}
        wanted = set(self.types) if self.types else handled
        return sorted(handled & wanted)


@dataclass
class ConsumerTally:
    """What replay did (or, in a dry run, would do) for one consumer."""

    backfilled: int = 0
    resent: int = 0
    reset_dead: int = 0
    reset_done: int = 0
    skipped_done: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def selected(self) -> int:
        """Deliveries re-delivered: everything counted except the skipped done ones."""
        return self.backfilled + self.resent + self.reset_dead + self.reset_done

    def count(self, action: Action) -> None:
        attribute = {
            Action.BACKFILL: "backfilled",
            Action.RESEND: "resent",
            Action.RESET_DEAD: "reset_dead",
            Action.RESET_DONE: "reset_done",
            Action.SKIP_DONE: "skipped_done",
        }[action]
        setattr(self, attribute, getattr(self, attribute) + 1)


@dataclass
class ReplayReport:
    """The outcome of one replay: per consumer tallies and what the broker refused."""

    mode: Mode
    events_scanned: int = 0
    consumers: dict[str, ConsumerTally] = field(default_factory=dict)
    # Written to the ledger but not published (broker down): the relay sends them later.
    unpublished: int = 0
    # Delivery-id chunks (``redeliver_deliveries``): how many were written, the last id
    # of the last one, and False when the time budget ran out before the selection did.
    chunks: int = 0
    last_pk: int = 0
    finished: bool = True

    @property
    def broker_failed(self) -> bool:
        return self.unpublished > 0

    @property
    def selected(self) -> int:
        return sum(tally.selected for tally in self.consumers.values())

    def tally(self, consumer: str) -> ConsumerTally:
        return self.consumers.setdefault(consumer, ConsumerTally())


# ------------------------------------------------------------------------------
# Selection
# ------------------------------------------------------------------------------
def selected_events(selection: ReplaySelection) -> QuerySet[Event]:
    """The stored events the selection covers, unordered, payload not loaded."""
    events = Event.objects.filter(type__in=selection.handled_types())
    if selection.since is not None:
        events = events.filter(occurred_at__gte=selection.since)
    if selection.until is not None:
        events = events.filter(occurred_at__lt=selection.until)
    if selection.event_ids:
        events = events.filter(id__in=selection.event_ids)
    if selection.upload_ids:
        events = events.filter(aggregate_id__in=[str(pk) for pk in selection.upload_ids])
    if selection.dead_only or selection.error_contains:
        # Reading only events with a matching delivery keeps --dead fast on a large log.
        events = events.filter(
            Exists(
                _matching_deliveries(selection).filter(
                    event=OuterRef("pk"), consumer__in=selection.consumers
                )
            )
        )
    return events.only(*_EVENT_FIELDS).order_by()


def _matching_deliveries(selection: ReplaySelection) -> QuerySet[Delivery]:
    """The existing deliveries ``--dead`` and ``--error-contains`` narrow a replay to."""
    deliveries = Delivery.objects.all()
    if selection.dead_only:
        deliveries = deliveries.filter(state=Delivery.State.DEAD)
    if selection.error_contains:
        deliveries = deliveries.filter(last_error__icontains=selection.error_contains)
    return deliveries


def count_selected_events(selection: ReplaySelection) -> int:
    """How many events ``replay_events`` would read: the total of a progress bar."""
    return selected_events(selection).count()


# ------------------------------------------------------------------------------
# Replaying
# ------------------------------------------------------------------------------
def record_replay(
    *, selection: dict[str, object], mode: Mode, operator: Operator, outcome: str
) -> None:
    """Record that ``operator`` replayed ``selection`` and what came of it (an
    ``operator.replay`` event, which the audit consumer chains with who did it).

    ``selection``: ``ReplaySelection.to_json()`` from ``replay_events``, or the deliveries
    an admin action picked (``redelivery_selection``). Recorded once the replay stopped,
    finished or not (the command records an interrupted one too), so the record is never
    among what it replays. A dry run changes nothing and is not recorded.
    """
    if mode is Mode.DRY_RUN:
        return
    with transaction.atomic():
        record_event(
            event_type=OPERATOR_REPLAY,
            aggregate_id="replay",
            actor=operator.user_id,
            payload={
                "operator": operator.name,
                "mode": str(mode),
                "selection": selection,
                "outcome": outcome,
            },
        )


# The delivery ids an admin action's record lists; past this, it keeps their count only.
RECORDED_DELIVERY_IDS = 1000


def redelivery_selection(deliveries: QuerySet[Delivery], *, force: bool) -> dict[str, object]:
    """What an admin action on ``deliveries`` selected, as ``record_replay`` keeps it."""
    ids = list(deliveries.order_by("pk").values_list("pk", flat=True)[: RECORDED_DELIVERY_IDS + 1])
    return {
        "deliveries": len(ids) if len(ids) <= RECORDED_DELIVERY_IDS else deliveries.count(),
        "delivery_ids": ids[:RECORDED_DELIVERY_IDS],
        "force": force,
    }


def replay_events(
    *,
    selection: ReplaySelection,
    mode: Mode = Mode.PUBLISH,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_progress: ProgressCallback | None = None,
) -> ReplayReport:
    """Re-deliver the selected stored events to the selected consumers.

    ``Mode.PUBLISH`` commits each chunk's ledger changes and publishes its deliveries
    on commit; if the broker is down they stay in the outbox for the relay.
    ``Mode.INLINE`` runs each delivery's handler in this process with
    ``events.delivery.run_delivery`` (same lock, dedupe and ledger; no broker), for fast
    backfills; the relay leaves its chunk's deliveries to it for ``INLINE_HOLD`` and
    publishes those it leaves retrying once their retry is due. ``Mode.DRY_RUN`` writes
    and publishes nothing and counts what the other modes would do. ``on_progress`` receives the number of events read so far
    after each chunk.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    consumers = [get_consumer(name) for name in selection.consumers]
    report = ReplayReport(mode=mode)
    for name in selection.consumers:
        report.tally(name)
    for events in events_in_chunks(selected_events(selection), chunk_size=chunk_size):
        _replay_chunk(events, consumers=consumers, selection=selection, report=report)
        report.events_scanned += len(events)
        if on_progress is not None:
            on_progress(report.events_scanned)
    return report


def _replay_chunk(
    events: list[Event],
    *,
    consumers: list[Consumer],
    selection: ReplaySelection,
    report: ReplayReport,
) -> None:
    names = [consumer.name for consumer in consumers]
    existing = Delivery.objects.filter(event_id__in=[e.pk for e in events], consumer__in=names)
    if selection.error_contains:
        # A pair whose delivery does not match is then planned as having no row: skipped.
        existing = existing.filter(last_error__icontains=selection.error_contains)
    existing = existing.only("id", "event_id", "consumer", "state").order_by("pk")
    if report.mode is Mode.DRY_RUN:
        _count_plan(_plan_chunk(events, consumers, list(existing), selection), report)
        return
    with transaction.atomic():
        # Locked in pk order so that two replays, or a replay and a worker, never deadlock.
        rows = list(existing.select_for_update())
        plan = _plan_chunk(events, consumers, rows, selection)
        to_deliver = _write_plan(plan, report)
    if report.mode is Mode.INLINE:
        _deliver_inline(to_deliver, report)


PlanItem = tuple[Action, Event, str, Delivery | None]


def _plan_chunk(
    events: list[Event],
    consumers: list[Consumer],
    rows: Iterable[Delivery],
    selection: ReplaySelection,
) -> list[PlanItem]:
    by_pair = {(row.event_id, row.consumer): row for row in rows}
    plan: list[PlanItem] = []
    for event in events:
        for consumer in consumers:
            if not consumer.handles(event.type):
                continue
            delivery = by_pair.get((event.pk, consumer.name))
            if delivery is None and selection.error_contains:
                continue  # no row, or one whose error does not match: nothing to backfill
            action = action_for(
                delivery.state if delivery else None,
                dead_only=selection.dead_only,
                force=selection.force,
            )
            if action is not None:
                plan.append((action, event, consumer.name, delivery))
    return plan


def action_for(state: str | None, *, dead_only: bool, force: bool) -> Action | None:
    """What replay does with a delivery in ``state`` (``None``: no row); ``None``: nothing."""
    if state is None:
        return None if dead_only else Action.BACKFILL
    if state == Delivery.State.DONE:
        if force:
            return Action.RESET_DONE
        return None if dead_only else Action.SKIP_DONE
    if state == Delivery.State.DEAD:
        return Action.RESET_DEAD
    return None if dead_only else Action.RESEND


def _count_plan(plan: list[PlanItem], report: ReplayReport) -> None:
    for action, _event, consumer, _delivery in plan:
        report.tally(consumer).count(action)


def _write_plan(plan: list[PlanItem], report: ReplayReport) -> list[Delivery]:
    """Apply ``plan`` to the ledger inside the caller's transaction.

    In publish mode the deliveries are published when that transaction commits; in
    inline mode they are returned, marked sent (``enqueued_at``) so the relay leaves
    them to this process for ``INLINE_HOLD``.
    """
    _count_plan(plan, report)
    # Marked sent a while ahead, so the relay leaves them to this process meanwhile. On
    # the database's clock: the relay compares enqueued_at with it, and this host's clock
    # may be minutes off (issue 17 problem 7).
    claimed_at = Now() + INLINE_HOLD if report.mode is Mode.INLINE else None
    to_deliver: list[Delivery] = []

    backfill = [
        (event, consumer) for action, event, consumer, _ in plan if action is Action.BACKFILL
    ]
    created: dict[tuple[uuid.UUID, str], Delivery] = {}
    if backfill:
        # ignore_conflicts: a second replay backfilling the same pair at the same moment
        # must not fail this one; whichever row exists afterwards is the one delivered.
        Delivery.objects.bulk_create(
            [
                Delivery(event=event, consumer=name, enqueued_at=claimed_at)
                for event, name in backfill
            ],
            ignore_conflicts=True,
        )
        wanted = {(event.pk, name) for event, name in backfill}
        for row in (
            Delivery.objects.select_for_update()
            .filter(
                event_id__in={pk for pk, _ in wanted},
                consumer__in={name for _, name in wanted},
                state__in=Delivery.OPEN_STATES,
            )
            .only("id", "event_id", "consumer", "state")
            .order_by("pk")
        ):
            if (row.event_id, row.consumer) in wanted:
                created[(row.event_id, row.consumer)] = row

    reset_ids = [d.pk for a, _, _, d in plan if a in (Action.RESET_DEAD, Action.RESET_DONE) and d]
    if reset_ids:
        Delivery.objects.filter(pk__in=reset_ids).update(
            state=Delivery.State.PENDING,
            retry_at=None,
            completed_at=None,
            # Its whole attempt budget again, counted from here; ``attempts`` counts on,
            # so the fence and the attempt history stay unique.
            attempts_at_redrive=F("attempts"),
            enqueued_at=claimed_at,
            updated_at=Now(),
        )
    resend_ids = [d.pk for a, _, _, d in plan if a is Action.RESEND and d]
    if resend_ids and claimed_at is not None:
        Delivery.objects.filter(pk__in=resend_ids).update(enqueued_at=claimed_at)

    for action, event, consumer, delivery in plan:
        if action is Action.SKIP_DONE:
            continue
        if action is Action.BACKFILL:
            delivery = created.get((event.pk, consumer))
        if delivery is None:
            continue
        delivery.event = event  # publishing reads its type and correlation id
        to_deliver.append(delivery)

    if report.mode is Mode.PUBLISH and to_deliver:
        transaction.on_commit(lambda: _publish(to_deliver, report))
        return []
    return to_deliver


def _publish(deliveries: list[Delivery], report: ReplayReport) -> None:
    """Publish after commit; once the broker has failed, leave the rest to the relay."""
    if report.broker_failed:
        # publish_deliveries_now already waited out its bounded retries once.
        report.unpublished += len(deliveries)
        return
    published = publish_deliveries_now(deliveries)
    report.unpublished += len(deliveries) - len(published)


def _worker_name() -> str:
    return f"replay_events --inline@{socket.gethostname()}"[:200]


# Prototype (issue 17): claims taken together, one commit per this many deliveries.
INLINE_CLAIM_BATCH = 50


def _deliver_inline(deliveries: list[Delivery], report: ReplayReport) -> None:
    worker = _worker_name()
    by_consumer: dict[str, list[Delivery]] = {}
    for delivery in deliveries:
        by_consumer.setdefault(delivery.consumer, []).append(delivery)
    claimed: set[int] = set()
    for name, rows in by_consumer.items():
        try:
            consumer = get_consumer(name)
        except LookupError:
            continue
        for start in range(0, len(rows), INLINE_CLAIM_BATCH):
            for claim in claim_batch(rows[start : start + INLINE_CLAIM_BATCH], consumer=consumer):
                claimed.add(claim.delivery.pk)
                outcome = run_claimed(claim, worker=worker)
                report.tally(name).outcomes[outcome.outcome] += 1
    for delivery in deliveries:
        if delivery.pk in claimed:
            continue
        outcome = run_delivery(
            delivery_id=delivery.pk,
            consumer_name=delivery.consumer,
            worker=worker,
        )
        report.tally(delivery.consumer).outcomes[outcome.outcome] += 1


# ------------------------------------------------------------------------------
# Admin actions
# ------------------------------------------------------------------------------
def redeliver_deliveries(
    *,
    deliveries: QuerySet[Delivery],
    force: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    after_pk: int = 0,
    states: Collection[str] | None = None,
    max_seconds: float | None = None,
) -> ReplayReport:
    """Re-send the given deliveries to their consumers' queues (publish mode).

    Dead ones are reset to pending, open ones (pending or retrying, perhaps stuck) are
    re-sent as they are, done ones are skipped unless ``force``, which resets them too.
    Deliveries whose consumer is no longer registered are skipped. Works through the
    selection by primary key from ``after_pk`` on, ``chunk_size`` at a time, each chunk
    in its own short transaction, so a large selection never holds the ledger long.

    ``states``: a delivery whose state, read under the chunk's lock, is no longer one of
    these is left alone (a bulk redrive of dead ones must not re-send one that a worker
    finished meanwhile). ``max_seconds``: stop after the chunk that used the budget up;
    the report then says ``finished=False`` and where to go on from (``last_pk``).
    """
    report = ReplayReport(mode=Mode.PUBLISH)
    report.last_pk = after_pk
    started = time.monotonic()
    registered = {consumer.name for consumer in all_consumers()}
    ids = deliveries.filter(consumer__in=registered).order_by("pk").values_list("pk", flat=True)
    while True:
        chunk_ids = list(ids.filter(pk__gt=report.last_pk)[:chunk_size])
        if not chunk_ids:
            return report
        report.last_pk = chunk_ids[-1]
        report.chunks += 1
        locked = Delivery.objects.filter(pk__in=chunk_ids)
        if states is not None:
            locked = locked.filter(state__in=states)
        with transaction.atomic():
            rows = list(
                locked.select_for_update(of=("self",))
                .select_related("event")
                .defer("event__payload")
                .order_by("pk")
            )
            plan: list[PlanItem] = []
            for row in rows:
                action = action_for(row.state, dead_only=False, force=force)
                if action is not None:
                    plan.append((action, row.event, row.consumer, row))
            _write_plan(plan, report)
        report.events_scanned += len({row.event_id for row in rows})
        # Checked after a chunk, so every run makes progress whatever its budget.
        if max_seconds is not None and time.monotonic() - started >= max_seconds:
            report.finished = len(chunk_ids) < chunk_size
            return report
