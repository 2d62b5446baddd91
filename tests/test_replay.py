"""``replay_events``: what it selects, what it resets, how it delivers, and what it refuses.

Most tests run inside the test transaction, so nothing reaches a worker: publishing is
replaced by a recorder and on-commit callbacks are captured. One test replays through a
real worker.
"""

from __future__ import annotations

import datetime as dt
import io
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.db.models.functions import Now
from django.utils import timezone

import housekeeping.replay
from audit.models import AuditEntry
from events import registry
from events.models import Delivery, DeliveryAttempt, Event
from events.outbox import record_event
from events.registry import Consumer, register_consumer
from events.relay import due_delivery_ids
from events.schemas import Envelope
from events.testing import drain
from housekeeping.events import OPERATOR_REPLAY
from housekeeping.replay import Mode, ReplaySelection, replay_events, selected_events
from notifications.models import Notification
from tests.factories import (
    bulk_probe_events,
    peak_memory_against_loading_the_log,
    publish_probe,
    settled,
)
from tests.probe.handlers import PROBE_EVENT
from tests.probe.models import ProbeEffect
from tests.processes import FakeTerminal, wait_for
from uploads.events import FILE_DELETED

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


# ------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------
@pytest.fixture
def replay(django_capture_on_commit_callbacks):
    """``call_command("replay_events", ...)`` with its on-commit publishes executed."""

    def run(*args: str) -> str:
        out = io.StringIO()
        with django_capture_on_commit_callbacks(execute=True):
            call_command("replay_events", *args, stdout=out)
        return out.getvalue()

    return run


def probe_event(*, aggregate_id: str = "probe", at: dt.datetime | None = None, **payload) -> Event:
    """A stored ``test.probe`` event whose deliveries (probe, probe_peer) are pending."""
    with transaction.atomic():
        event = record_event(
            event_type=PROBE_EVENT,
            aggregate_id=aggregate_id,
            payload={"key": uuid.uuid4().hex, **payload},
        )
    if at is not None:
        Event.objects.filter(pk=event.pk).update(occurred_at=at)
        event.refresh_from_db()
    return event


def set_state(event: Event, state: str, consumer: str | None = None) -> None:
    deliveries = Delivery.objects.filter(event=event)
    if consumer:
        deliveries = deliveries.filter(consumer=consumer)
    deliveries.update(
        state=state,
        attempts=1,
        completed_at=timezone.now() if state == "done" else None,
        last_error="boom" if state == "dead" else "",
    )


def deleted_event(owner_id: int, upload_id: int = 7) -> Event:
    """A stored ``file.deleted``: every consumer handles it without touching storage."""
    with transaction.atomic():
        return record_event(
            event_type=FILE_DELETED,
            aggregate_id=upload_id,
            payload={
                "upload_id": upload_id,
                "owner_id": owner_id,
                "name": "gone.txt",
                "storage_name": "",
            },
        )


def ledger_snapshot(**filters: Any) -> list[tuple]:
    return list(
        Delivery.objects.filter(**filters)
        .order_by("pk")
        .values_list(
            "pk", "state", "attempts", "enqueued_at", "completed_at", "retry_at", "last_error"
        )
    )


# ------------------------------------------------------------------------------
# Selection
# ------------------------------------------------------------------------------
@pytest.fixture
def dead_events(db) -> dict[str, Event]:
    """Four probe events at different times and aggregates, every delivery dead."""
    events = {
        "early": probe_event(aggregate_id="11", at=T0),
        "middle": probe_event(aggregate_id="12", at=T0 + dt.timedelta(hours=1)),
        "late": probe_event(aggregate_id="12", at=T0 + dt.timedelta(hours=2)),
        "latest": probe_event(aggregate_id="13", at=T0 + dt.timedelta(hours=3)),
    }
    for event in events.values():
        set_state(event, "dead")
    return events


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            [],
            {
                (c, e)
                for c in ("probe", "probe_peer")
                for e in ("early", "middle", "late", "latest")
            },
        ),
        (["--consumer", "probe"], {("probe", e) for e in ("early", "middle", "late", "latest")}),
        (
            ["--consumer", "probe", "--consumer", "probe_peer", "--event", "<early>"],
            {("probe", "early"), ("probe_peer", "early")},
        ),
        (
            ["--type", PROBE_EVENT, "--consumer", "probe_peer", "--upload", "13"],
            {("probe_peer", "latest")},
        ),
        (
            ["--consumer", "probe", "--since", "2024-05-01T13:00:00+00:00"],
            {("probe", "middle"), ("probe", "late"), ("probe", "latest")},
        ),
        (["--consumer", "probe", "--until", "2024-05-01T13:00:00Z"], {("probe", "early")}),
        (
            ["--consumer", "probe", "--since", "2024-05-01T12:30", "--until", "2024-05-01T15:00"],
            {("probe", "middle"), ("probe", "late")},
        ),
        (
            ["--consumer", "probe", "--upload", "12", "--upload", "11"],
            {("probe", "early"), ("probe", "middle"), ("probe", "late")},
        ),
        (
            ["--consumer", "probe", "--event", "<late>", "--event", "<latest>"],
            {("probe", "late"), ("probe", "latest")},
        ),
        (["--consumer", "probe", "--type", FILE_DELETED], None),
    ],
    ids=[
        "all",
        "consumer",
        "two-consumers-one-event",
        "type-and-upload",
        "since",
        "until",
        "since-until",
        "uploads",
        "events",
        "type-not-handled",
    ],
)
def test_replay_selects_dead_deliveries_by_each_flag(
    dead_events, published, replay, args, expected
):
    args = [str(dead_events[a[1:-1]].id) if a.startswith("<") else a for a in args]
    if expected is None:
        # probe consumers do not handle file.deleted: a mistake, said so.
        with pytest.raises(CommandError, match="handles the selected event types"):
            replay(*args)
        assert published.sent == []
        return

    replay(*args)

    names = {event.id: name for name, event in dead_events.items()}
    assert {(consumer, names[event_id]) for consumer, event_id in published.sent} == expected
    assert len(published.sent) == len(expected)
    # (the audit log's delivery of the replay's own record is pending too)
    reset = Delivery.objects.filter(state="pending").exclude(event__type=OPERATOR_REPLAY)
    assert {(d.consumer, names[d.event_id]) for d in reset} == expected
    # What was not selected stays dead.
    assert Delivery.objects.filter(state="dead").count() == 8 - len(expected)


def test_dead_flag_selects_only_dead_deliveries(db, published, replay):
    # given one event per state, at each consumer
    dead, done, pending = probe_event(), probe_event(), probe_event()
    set_state(dead, "dead", "probe")
    set_state(done, "done")
    Delivery.objects.filter(event=dead, consumer="probe_peer").update(state="retrying")
    untouched = ledger_snapshot(event=pending)

    # when
    replay("--dead")

    # then only the one dead delivery is reset and sent; open ones are left alone
    assert published.sent == [("probe", dead.id)]
    assert Delivery.objects.get(event=dead, consumer="probe").state == "pending"
    assert Delivery.objects.get(event=dead, consumer="probe_peer").state == "retrying"
    assert set(Delivery.objects.filter(event=done).values_list("state", flat=True)) == {"done"}
    assert ledger_snapshot(event=pending) == untouched


def test_error_contains_narrows_a_dead_replay_to_matching_last_errors(db, published, replay):
    # given dead deliveries with different last errors, and a retrying one that matches
    timed_out, refused, open_event = probe_event(), probe_event(), probe_event()
    set_state(timed_out, "dead")
    set_state(refused, "dead")
    Delivery.objects.filter(event=timed_out, consumer="probe").update(
        last_error="gave up after 4 attempts: SMTP Timeout after 30 s"
    )
    Delivery.objects.filter(event=open_event, consumer="probe").update(
        state="retrying", last_error="smtp timeout"
    )

    # when the operator redrives the dead ones whose error says timeout (any case)
    out = replay("--dead", "--error-contains", "timeout")

    # then only that one delivery is reset and sent; the rest are left as they were
    assert published.sent == [("probe", timed_out.id)]
    assert Delivery.objects.get(event=timed_out, consumer="probe").state == "pending"
    assert Delivery.objects.get(event=timed_out, consumer="probe_peer").state == "dead"
    assert set(Delivery.objects.filter(event=refused).values_list("state", flat=True)) == {"dead"}
    assert "probe: re-delivering 1 (0 missing created, 1 dead reset" in out
    assert "probe_peer: re-delivering 0 " in out


def test_a_replay_from_the_command_line_is_chained_into_the_audit_log_with_its_filter(
    db, published, replay
):
    # given a dead delivery an operator redrives from the command line
    timed_out = probe_event()
    set_state(timed_out, "dead")
    Delivery.objects.filter(event=timed_out, consumer="probe").update(last_error="SMTP timeout")

    replay("--dead", "--error-contains", "timeout", "--consumer", "probe", "--since", "2020-01-01")
    replay("--dead", "--dry-run")  # changes nothing, so records nothing

    # then the audit consumer chains who did it and what they selected
    assert [o.outcome for o in drain("audit")] == ["done"]
    [entry] = AuditEntry.objects.filter(event_type=OPERATOR_REPLAY)
    assert entry.actor is None  # no signed-in user on the command line
    assert entry.detail["operator"].endswith("(command line)")
    assert entry.detail["mode"] == "publish"
    selection = entry.detail["selection"]
    assert (selection["consumers"], selection["dead_only"], selection["error_contains"]) == (
        ["probe"],
        True,
        "timeout",
    )
    assert selection["since"].startswith("2020-01-01")
    assert published.sent == [("probe", timed_out.id)]


def test_error_contains_without_dead_resends_matching_open_ones_and_backfills_nothing(
    db, published, replay
):
    stuck, other = probe_event(), probe_event()
    Delivery.objects.filter(event=stuck, consumer="probe").update(
        state="retrying", last_error="connection refused"
    )
    Delivery.objects.filter(event=other, consumer="probe_peer").delete()

    replay("--error-contains", "REFUSED")

    assert published.sent == [("probe", stuck.id)]
    assert not Delivery.objects.filter(event=other, consumer="probe_peer").exists()


def test_default_replay_resends_open_and_dead_deliveries_and_skips_done(db, published, replay):
    open_event, dead, done = probe_event(), probe_event(), probe_event()
    set_state(dead, "dead")
    set_state(done, "done")

    out = replay()

    assert {event_id for _, event_id in published.sent} == {open_event.id, dead.id}
    assert set(Delivery.objects.filter(event=done).values_list("state", flat=True)) == {"done"}
    assert "probe: re-delivering 2 (0 missing created, 1 dead reset, 1 open, 1 done skipped)" in out
    assert "3 events read, 4 deliveries published" in out


def test_dead_replay_with_nothing_dead_says_so_once(db, published, replay):
    set_state(probe_event(), "done")

    out = replay("--dead")

    assert out.splitlines() == ["no dead delivery matches the selection: nothing to re-deliver"]
    assert published.sent == []


def test_replay_says_how_many_selected_events_are_no_longer_stored(db, published, replay):
    kept = probe_event()
    set_state(kept, "dead")
    pruned = [str(uuid.uuid4()), str(uuid.uuid4())]

    out = replay("--event", str(kept.id), *(f"--event={pk}" for pk in pruned))

    assert "2 of the 3 selected events are not in the event log (pruned, or never stored)" in out
    assert {event_id for _, event_id in published.sent} == {kept.id}


def test_replay_of_only_unknown_events_says_they_are_not_stored(db, published, replay):
    out = replay("--event", str(uuid.uuid4()))

    assert out.splitlines() == [
        "1 of the 1 selected events are not in the event log (pruned, or never stored)",
        "no stored event matches the selection",
    ]


@pytest.mark.django_db(transaction=True)
def test_broker_down_leaves_reset_deliveries_in_the_outbox_and_exits_non_zero(monkeypatch):
    # given a broker that takes nothing (committed rows: each chunk publishes on its commit)
    def broker_down(deliveries: Any, **kwargs: Any) -> list[int]:
        return []

    monkeypatch.setattr("housekeeping.replay.publish_deliveries_now", broker_down)
    # and an event the session worker never hears of (no on-commit publish)
    monkeypatch.setattr("events.outbox.publish_committed", lambda *args: None)
    event = probe_event()
    set_state(event, "dead")

    with pytest.raises(
        CommandError, match="broker is unreachable: 2 deliveries wait in the outbox"
    ):
        call_command("replay_events", "--dead", stdout=io.StringIO())

    # then the reset is kept, unenqueued, for the relay to publish
    for delivery in Delivery.objects.filter(event=event):
        assert delivery.state == "pending"
        assert delivery.enqueued_at is None  # no message out: the relay sends it after its grace


def test_done_deliveries_are_skipped_unless_forced(db, published, replay):
    event = probe_event()
    set_state(event, "done")
    DeliveryAttempt.objects.create(
        delivery=Delivery.objects.get(event=event, consumer="probe"),
        number=1,
        started_at=timezone.now(),
        finished_at=timezone.now(),
        outcome="done",
    )

    replay("--consumer", "probe")
    assert published.sent == []
    assert Delivery.objects.get(event=event, consumer="probe").state == "done"

    out = replay("--consumer", "probe", "--force")

    assert published.sent == [("probe", event.id)]
    delivery = Delivery.objects.get(event=event, consumer="probe")
    assert delivery.state == "pending"
    assert delivery.completed_at is None
    assert delivery.attempts == 1  # attempts kept
    assert delivery.tries.count() == 1  # history kept
    assert Delivery.objects.get(event=event, consumer="probe_peer").state == "done"
    assert "1 done reset" in out


def test_dry_run_changes_nothing_and_publishes_nothing(db, published, replay, user):
    # given deliveries in every state, and a consumer without a row (backfill)
    open_event, dead, done = probe_event(), probe_event(), probe_event()
    set_state(dead, "dead")
    set_state(done, "done")
    Delivery.objects.filter(event=open_event, consumer="probe_peer").delete()
    before = ledger_snapshot()

    out = replay("--dry-run", "--force")

    assert published.calls == 0
    assert ledger_snapshot() == before
    assert Delivery.objects.count() == 5
    assert "probe: would deliver 3 (0 missing created, 1 dead reset, 1 open, 1 done reset)" in out
    assert (
        "probe_peer: would deliver 3 (1 missing created, 1 dead reset, 0 open, 1 done reset)" in out
    )
    assert "nothing was changed or published" in out


def test_dry_run_without_force_counts_the_done_deliveries_it_would_skip(db, published, replay):
    set_state(probe_event(), "done")

    out = replay("--dry-run", "--consumer", "probe")

    assert "probe: would deliver 0 (0 missing created, 0 dead reset, 0 open, 1 done skipped)" in out


# ------------------------------------------------------------------------------
# Inline
# ------------------------------------------------------------------------------
def test_inline_runs_handlers_in_process_without_a_worker(db, published, replay):
    event = probe_event()
    set_state(event, "dead")

    out = replay("--inline", "--dead")

    assert published.calls == 0
    assert set(Delivery.objects.filter(event=event).values_list("state", flat=True)) == {"done"}
    assert ProbeEffect.objects.filter(event_id=event.id).count() == 2
    delivery = Delivery.objects.get(event=event, consumer="probe")
    assert delivery.attempts == 2
    attempt = delivery.tries.get()
    assert attempt.outcome == "done"
    assert attempt.worker.startswith("replay_events --inline@")
    assert "probe: ran 1 (0 missing created, 1 dead reset, 0 open, 0 done skipped) -> 1 done" in out


def test_inline_failure_is_recorded_in_the_ledger_like_a_worker_would(db, published, replay):
    event = probe_event(permanent_failures=["probe"])

    out = replay("--inline", "--consumer", "probe")

    delivery = Delivery.objects.get(event=event, consumer="probe")
    assert delivery.state == "dead"
    assert "refused on purpose" in delivery.last_error
    assert "-> 1 dead" in out


def test_forced_inline_replay_of_real_consumers_produces_no_duplicate_effects(
    db, published, replay, user, mailoutbox
):
    # given a file.deleted that every consumer has handled once
    event = deleted_event(owner_id=user.pk)
    replay("--inline", "--event", str(event.id))
    assert set(Delivery.objects.filter(event=event).values_list("state", flat=True)) == {"done"}
    assert len(mailoutbox) == 1

    # when it is forced through again
    out = replay("--inline", "--force", "--event", str(event.id))

    # then every handler ran again and deduped: one audit entry, one notification, one mail
    assert "notifications: ran 1" in out and "audit: ran 1" in out
    assert AuditEntry.objects.filter(event_id=event.id).count() == 1
    assert Notification.objects.filter(event_id=event.id).count() == 1
    assert len(mailoutbox) == 1
    for delivery in Delivery.objects.filter(event=event):
        assert delivery.state == "done"
        assert delivery.attempts == 2
        assert list(delivery.tries.values_list("outcome", flat=True)) == ["done", "done"]


# ------------------------------------------------------------------------------
# Backfill of a consumer registered after the events were stored
# ------------------------------------------------------------------------------
late_calls: list[uuid.UUID] = []


def _late_handler(envelope: Envelope) -> None:
    late_calls.append(envelope.id)


@contextmanager
def late_consumer_registered() -> Iterator[Consumer]:
    """Register the ``latecomer`` consumer for one block, and remove it afterwards."""
    late_calls.clear()
    # A fresh name each time: a consumer's Celery task cannot be registered twice.
    consumer = register_consumer(
        Consumer(
            name=f"latecomer_{uuid.uuid4().hex[:8]}",
            queue="probe",
            handlers={PROBE_EVENT: _late_handler},
        )
    )
    try:
        yield consumer
    finally:
        registry._consumers.pop(consumer.name, None)


def test_new_consumer_is_backfilled_inline_with_events_stored_before_it(
    db, published, replay, django_user_model
):
    # given events stored while the consumer did not exist
    old = [probe_event(), probe_event()]
    unrelated = deleted_event(owner_id=django_user_model.objects.create(username="x").pk)

    # when it is registered and backfilled
    with late_consumer_registered() as consumer:
        name = consumer.name
        assert not Delivery.objects.filter(consumer=name).exists()
        out = replay("--consumer", name, "--inline")

        # then it has a done delivery for each event of a type it handles, in order
        assert late_calls == [event.id for event in old]
        assert set(Delivery.objects.filter(consumer=name).values_list("event_id", "state")) == {
            (event.id, "done") for event in old
        }
        assert not Delivery.objects.filter(event=unrelated, consumer=name).exists()
        assert f"{name}: ran 2 (2 missing created" in out

        # and a second backfill finds nothing left to do
        out = replay("--consumer", name, "--inline")
        assert late_calls == [event.id for event in old]
        assert f"{name}: ran 0 (0 missing created, 0 dead reset, 0 open, 2 done skipped)" in out
    assert published.calls == 0


def test_new_consumer_backfill_through_the_broker_creates_and_publishes_deliveries(
    db, published, replay
):
    events = [probe_event(), probe_event()]

    with late_consumer_registered() as consumer:
        replay("--consumer", consumer.name)

    assert published.sent == [(consumer.name, event.id) for event in events]
    assert set(Delivery.objects.filter(consumer=consumer.name).values_list("state", flat=True)) == {
        "pending"
    }
    assert late_calls == []  # a worker would run them; none runs here


# ------------------------------------------------------------------------------
# Bad arguments
# ------------------------------------------------------------------------------
BAD_ARGUMENTS = [
    (["--consumer", "nosuch"], "unknown consumer 'nosuch' (known: "),
    (["--type", "file.exploded"], "unknown event type 'file.exploded' (known: "),
    (["--since", "yesterday"], "--since: 'yesterday' is not an ISO 8601 date or date-time"),
    (["--until", "2024-13-01"], "--until: '2024-13-01' is not an ISO 8601 date or date-time"),
    (
        ["--since", "2024-05-02", "--until", "2024-05-01"],
        "--since (2024-05-02T00:00:00+00:00) must be before --until (2024-05-01T00:00:00+00:00)",
    ),
    (["--event", "not-a-uuid"], "--event: 'not-a-uuid' is not a UUID"),
    (["--upload", "12a"], "--upload: '12a' is not an upload id (a positive integer)"),
    (["--upload", "-3"], "--upload: '-3' is not an upload id (a positive integer)"),
    (["--chunk-size", "0"], "--chunk-size: '0' is not a positive integer"),
    (["--error-contains", "  "], "--error-contains: give the text to look for"),
    (["--bogus"], "unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize(("args", "message"), BAD_ARGUMENTS, ids=[a[0] for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_raise_a_clear_error_and_enqueue_nothing(
    db, published, replay, args, message
):
    dead = probe_event()
    set_state(dead, "dead")
    before = ledger_snapshot()

    with pytest.raises(CommandError) as error:
        replay(*args)

    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert published.calls == 0
    assert ledger_snapshot() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--consumer", "nosuch"], "unknown consumer 'nosuch'"),
        (["--since", "2024-05-02", "--until", "2024-05-01"], "must be before --until"),
        (["--upload", "abc"], "--upload: 'abc' is not an upload id"),
    ],
)
def test_bad_arguments_exit_non_zero_with_one_line_on_stderr(run_manage, args, message):
    result = run_manage("replay_events", *args)

    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("CommandError: ")
    assert message in lines[0]


# ------------------------------------------------------------------------------
# Progress and streaming
# ------------------------------------------------------------------------------
def test_progress_bar_is_drawn_on_a_terminal_only(db, published, replay):
    for _ in range(5):
        set_state(probe_event(), "dead")

    terminal = FakeTerminal()
    call_command("replay_events", "--dry-run", "--chunk-size", "2", stdout=terminal)
    piped = replay("--dry-run", "--chunk-size", "2")

    shown = terminal.getvalue()
    assert "\r" in shown
    assert "100%" in shown and "5/5" in shown
    assert shown.index("5/5") < shown.index("dry run: 5 events read")
    assert "\r" not in piped and "5/5" not in piped


@pytest.mark.parametrize("mode", ["--dry-run", "--force"])
def test_replay_reads_the_log_in_a_bounded_number_of_queries_per_chunk(
    db, published, replay, django_assert_max_num_queries, mode
):
    bulk_probe_events(3000)
    chunk_size = 250
    chunks = 3000 // chunk_size + 1  # the last, empty page ends the scan

    # Per chunk: events page, delivery rows, and in a real run the savepoint pair, one
    # reset UPDATE and the publish's enqueued_at UPDATE; never one per event or delivery.
    with django_assert_max_num_queries(6 * chunks + 2):
        out = replay(mode, "--chunk-size", str(chunk_size))

    assert "3000 events read" in out
    assert len(published.sent) == (6000 if mode == "--force" else 0)


def test_replay_memory_stays_far_below_loading_the_whole_log(db, published):
    # given a log whose payloads are not small
    bulk_probe_events(3000, padding=2000)
    selection = ReplaySelection(consumers=("probe", "probe_peer"))

    report, replay_peak, loading_all = peak_memory_against_loading_the_log(
        lambda: replay_events(selection=selection, mode=Mode.DRY_RUN, chunk_size=100)
    )

    assert report.events_scanned == 3000
    assert report.consumers["probe"].skipped_done == 3000
    assert replay_peak < loading_all / 10


def test_keyset_pages_cover_events_that_share_a_timestamp_exactly_once(db, published):
    # given more events at one instant than a chunk holds
    bulk_probe_events(10, state="dead")
    Event.objects.update(occurred_at=T0)

    report = replay_events(
        selection=ReplaySelection(consumers=("probe",)), mode=Mode.DRY_RUN, chunk_size=3
    )

    assert report.events_scanned == 10
    assert report.consumers["probe"].reset_dead == 10
    assert selected_events(ReplaySelection(consumers=("probe",))).count() == 10


# ------------------------------------------------------------------------------
# Through a real worker
# ------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_replayed_dead_delivery_is_done_by_the_worker(live_worker, running_relay):
    # given a delivery whose failures outlasted its retries (4 tries) and then cleared up
    event = publish_probe(transient_failures={"probe": 4})
    assert wait_for(lambda: settled(event), what="retries to run out")["probe"] == "dead"

    # when the operator replays dead deliveries
    out = io.StringIO()
    call_command("replay_events", "--dead", stdout=out)

    # then the worker runs it once more and it is done, with its history intact
    assert "probe: re-delivering 1 (0 missing created, 1 dead reset" in out.getvalue()
    assert wait_for(lambda: settled(event), what="replayed delivery")["probe"] == "done"
    delivery = Delivery.objects.get(event=event, consumer="probe")
    assert delivery.attempts == 5
    assert list(delivery.tries.values_list("outcome", flat=True)) == [
        "retry",
        "retry",
        "retry",
        "dead",
        "done",
    ]
    assert ProbeEffect.objects.filter(event_id=event.id, consumer="probe").count() == 1
    assert ProbeEffect.objects.filter(event_id=event.id, consumer="probe_peer").count() == 1


def test_inline_hold_is_counted_on_the_database_clock_not_the_host_clock(
    db, published, replay, monkeypatch
):
    # given a host whose clock is ten minutes behind the database's (the relay compares
    # the hold with the database clock), and a dead delivery to replay inline
    event = probe_event()
    set_state(event, "dead", consumer="probe")
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() - dt.timedelta(minutes=10))
    seen_by_relay: list[bool] = []
    real_claim = housekeeping.replay.claim_batch

    def claim_and_look(deliveries: list[Delivery], **kwargs: Any):
        # The moment the inline run starts: the relay must leave these deliveries to it.
        for delivery in deliveries:
            due = delivery.pk in due_delivery_ids(["probe"], limit=100)
            # Marked sent before the database's now: the relay's loss count would expect
            # its message in the queue and send it again.
            counted_as_out = Delivery.objects.filter(pk=delivery.pk, enqueued_at__lt=Now())
            seen_by_relay.append(due or counted_as_out.exists())
        return real_claim(deliveries, **kwargs)

    monkeypatch.setattr(housekeeping.replay, "claim_batch", claim_and_look)

    # when it is replayed inline
    replay("--inline", "--dead", "--consumer", "probe")

    # then the relay did not see it as lost while this process held it
    assert seen_by_relay == [False]
    assert Delivery.objects.get(event=event, consumer="probe").state == "done"
