"""Retention: ``prune_events`` and the daily beat task drop old finished events only."""

from __future__ import annotations

import datetime as dt

import pytest
from celery import current_app
from django.core.management import CommandError, call_command
from django.utils import timezone

from audit.models import AuditEntry
from events.models import Delivery, DeliveryAttempt, Event
from housekeeping.retention import cutoff_for, prune_events, prune_old_events
from housekeeping.tasks import prune_events_task
from indexing.models import IndexEntry
from notifications.models import Notification
from tests.factories import (
    bulk_probe_events,
    peak_memory_against_loading_the_log,
    settled,
    upload_text,
)
from tests.processes import FakeTerminal, wait_for
from uploads.services import delete_upload


def age(events, days: int) -> None:
    """Make ``events`` (a queryset) look ``days`` old."""
    events.update(occurred_at=timezone.now() - dt.timedelta(days=days))


def finish(event: Event) -> None:
    """Mark every delivery of ``event`` done after one attempt, as a worker leaves it."""
    now = timezone.now()
    for delivery in Delivery.objects.filter(event=event):
        DeliveryAttempt.objects.create(
            delivery=delivery,
            number=1,
            started_at=now,
            finished_at=now,
            outcome=DeliveryAttempt.Outcome.DONE,
        )
    Delivery.objects.filter(event=event).update(
        state=Delivery.State.DONE, attempts=1, completed_at=now
    )


def uploaded_event(user) -> Event:
    return Event.objects.get(aggregate_id=str(upload_text(user).pk), type="file.uploaded")


@pytest.mark.django_db
def test_prune_deletes_old_finished_events_with_their_deliveries_and_attempts(user, capsys):
    old = [uploaded_event(user) for _ in range(3)]
    recent = uploaded_event(user)
    for event in [*old, recent]:
        finish(event)
    age(Event.objects.filter(pk__in=[e.pk for e in old]), days=40)
    per_event = Delivery.objects.filter(event=recent).count()  # one per consumer

    call_command("prune_events", "--older-than", "30", "--chunk-size", "2")

    assert list(Event.objects.values_list("pk", flat=True)) == [recent.pk]
    assert set(Delivery.objects.values_list("event_id", flat=True)) == {recent.pk}
    assert DeliveryAttempt.objects.count() == Delivery.objects.count() == per_event
    out = capsys.readouterr().out
    assert f"deleted 3 events, {3 * per_event} deliveries, {3 * per_event} attempts" in out


@pytest.mark.django_db
def test_prune_never_touches_an_event_with_a_waiting_or_dead_delivery(user, capsys):
    finished, waiting, dead = (uploaded_event(user) for _ in range(3))
    for event in (finished, waiting, dead):
        finish(event)
    Delivery.objects.filter(event=waiting, consumer="indexing").update(
        state=Delivery.State.RETRYING
    )
    Delivery.objects.filter(event=dead, consumer="audit").update(state=Delivery.State.DEAD)
    age(Event.objects.all(), days=90)

    kept_deliveries = Delivery.objects.filter(event__in=[waiting, dead]).count()

    call_command("prune_events", "--older-than", "30")

    assert set(Event.objects.values_list("pk", flat=True)) == {waiting.pk, dead.pk}
    assert Delivery.objects.filter(event__in=[waiting, dead]).count() == kept_deliveries
    assert "kept 2 older events that still have a delivery not done" in capsys.readouterr().out


@pytest.mark.django_db
def test_dry_run_says_what_it_would_delete_and_deletes_nothing(user, capsys):
    for _ in range(2):
        finish(uploaded_event(user))
    age(Event.objects.all(), days=31)
    deliveries = Delivery.objects.count()

    call_command("prune_events", "--older-than", "30", "--dry-run")

    assert Event.objects.count() == 2
    assert Delivery.objects.count() == DeliveryAttempt.objects.count() == deliveries
    out = capsys.readouterr().out
    assert f"would delete 2 events, {deliveries} deliveries, {deliveries} attempts" in out
    assert "nothing was deleted" in out


@pytest.mark.django_db
def test_prune_draws_a_progress_bar_on_a_terminal_only(user):
    for _ in range(3):
        finish(uploaded_event(user))
    age(Event.objects.all(), days=31)
    terminal = FakeTerminal()

    call_command("prune_events", "--older-than", "30", "--chunk-size", "1", stdout=terminal)

    assert "pruning" in terminal.getvalue() and "3/3" in terminal.getvalue()
    assert Event.objects.count() == 0


@pytest.mark.django_db
def test_prune_takes_a_fixed_number_of_queries_per_chunk(django_assert_max_num_queries):
    bulk_probe_events(3000)
    age(Event.objects.all(), days=60)
    chunk_size = 250
    chunks = 3000 // chunk_size + 1  # the last, empty page ends the scan

    # Per chunk: the page, the locked states, a savepoint pair, the events for the
    # consumers' forget_events and theirs, and the deletes of attempts, deliveries and
    # events; never one per event or delivery.
    with django_assert_max_num_queries(12 * chunks + 3):
        call_command("prune_events", "--older-than", "30", "--chunk-size", str(chunk_size))

    assert Event.objects.count() == Delivery.objects.count() == 0


@pytest.mark.django_db
def test_prune_memory_stays_far_below_loading_the_whole_log():
    # given a log whose payloads are not small
    bulk_probe_events(3000, padding=2000)
    age(Event.objects.all(), days=60)

    report, prune_peak, loading_all = peak_memory_against_loading_the_log(
        lambda: prune_events(cutoff=cutoff_for(30), chunk_size=100)
    )

    assert (report.events, report.deliveries) == (3000, 6000)
    assert prune_peak < loading_all / 10


@pytest.mark.django_db
@pytest.mark.parametrize("days", ["0", "-3", "soon", "1.5"])
def test_prune_refuses_a_bad_age(days):
    with pytest.raises(CommandError, match="--older-than"):
        call_command("prune_events", "--older-than", days)


@pytest.mark.django_db
def test_prune_needs_an_age():
    with pytest.raises(CommandError, match="--older-than"):
        call_command("prune_events")


@pytest.mark.django_db
def test_retention_of_zero_days_keeps_everything(user, settings):
    settings.EVENTS_RETENTION_DAYS = 0
    finish(uploaded_event(user))
    age(Event.objects.all(), days=3650)

    assert prune_old_events() is None

    assert Event.objects.count() == 1


@pytest.mark.django_db
def test_a_prune_past_its_time_budget_stops_after_the_chunk_it_is_in(user):
    for _ in range(3):
        finish(uploaded_event(user))
    age(Event.objects.all(), days=40)

    report = prune_events(cutoff=cutoff_for(30), chunk_size=2, max_seconds=0)

    assert (report.events, report.finished) == (2, False)
    assert Event.objects.count() == 1


@pytest.mark.django_db
def test_beat_task_sends_itself_again_until_the_prune_is_finished(user, monkeypatch):
    # One chunk per run, as if each took the whole time budget: the relay, on the same
    # single-process worker of the events queue, runs between two runs.
    monkeypatch.setattr("housekeeping.tasks.TASK_TIME_BUDGET_SECONDS", 0)
    monkeypatch.setattr("housekeeping.retention.DEFAULT_CHUNK_SIZE", 1)
    sent: list[dict] = []
    monkeypatch.setattr(prune_events_task, "apply_async", lambda **kw: sent.append(kw))
    for _ in range(2):
        finish(uploaded_event(user))
    age(Event.objects.all(), days=40)

    prune_events_task()
    assert Event.objects.count() == 1
    assert len(sent) == 1 and sent[0]["queue"] == "events"

    prune_events_task()
    prune_events_task()  # finds nothing left, sends nothing
    assert Event.objects.count() == 0
    assert len(sent) == 2


def test_beat_prunes_daily_on_the_events_queue():
    entry = current_app.conf.beat_schedule["prune-events"]

    assert entry["task"] == "events.prune_events"
    assert entry["options"]["queue"] == "events"
    assert entry["schedule"].remaining_estimate(timezone.now()) <= dt.timedelta(days=1)


@pytest.mark.django_db(transaction=True)
def test_audit_chain_verifies_after_the_worker_prunes_what_it_delivered(
    live_worker, user, settings, run_manage
):
    # given: uploads a real worker delivered to every consumer, the audit log included
    events = [uploaded_event(user) for _ in range(3)]
    for event in events:
        assert set(wait_for(lambda e=event: settled(e), what="deliveries").values()) == {"done"}
    audit_entries = AuditEntry.objects.count()
    assert audit_entries == 3
    age(Event.objects.filter(pk__in=[e.pk for e in events[:2]]), days=45)
    settings.EVENTS_RETENTION_DAYS = 30

    # when: the beat task runs on the worker (which reads the default retention, 30 days)
    current_app.send_task("events.prune_events", queue="events")
    wait_for(lambda: Event.objects.count() == 1, what="the worker to prune")

    # then
    assert Event.objects.get().pk == events[2].pk
    assert AuditEntry.objects.count() == audit_entries
    verified = run_manage("verify_audit")
    assert verified.returncode == 0, verified.stderr
    assert "audit chain intact: 3 entries checked" in verified.stdout


@pytest.mark.django_db
def test_an_event_with_a_dead_delivery_is_kept_for_the_dead_retention_then_pruned(user):
    young_dead, old_dead, old_waiting = (uploaded_event(user) for _ in range(3))
    for event in (young_dead, old_dead, old_waiting):
        finish(event)
        Delivery.objects.filter(event=event, consumer="audit").update(state=Delivery.State.DEAD)
    Delivery.objects.filter(event=old_waiting, consumer="indexing").update(
        state=Delivery.State.RETRYING
    )
    age(Event.objects.filter(pk=young_dead.pk), days=90)
    age(Event.objects.filter(pk__in=[old_dead.pk, old_waiting.pk]), days=400)

    call_command("prune_events", "--older-than", "30", "--dead-older-than", "365")

    assert set(Event.objects.values_list("pk", flat=True)) == {young_dead.pk, old_waiting.pk}


@pytest.mark.django_db
def test_beat_retention_keeps_dead_ones_for_events_dead_retention_days(user, settings):
    dead = uploaded_event(user)
    finish(dead)
    Delivery.objects.filter(event=dead, consumer="audit").update(state=Delivery.State.DEAD)
    age(Event.objects.all(), days=100)
    settings.EVENTS_RETENTION_DAYS = 30
    settings.EVENTS_DEAD_RETENTION_DAYS = 365
    prune_old_events()
    assert Event.objects.filter(pk=dead.pk).exists()

    settings.EVENTS_DEAD_RETENTION_DAYS = 60
    prune_old_events()
    assert not Event.objects.filter(pk=dead.pk).exists()


@pytest.mark.django_db
def test_pruning_an_event_drops_its_mail_claims_and_a_deleted_uploads_tombstone(user):
    kept_upload = upload_text(user, name="kept.txt")
    deleted_upload = upload_text(user, name="gone.txt")
    deleted_id = deleted_upload.pk
    delete_upload(deleted_upload, actor=user)
    events = list(Event.objects.all())
    for event in events:
        finish(event)
        Notification.objects.create(
            event_id=event.pk, recipient="owner@example.com", subject="s", state="sent"
        )
    IndexEntry.objects.create(upload_id=kept_upload.pk, owner_id=user.pk, name="kept.txt")
    IndexEntry.objects.create(upload_id=deleted_id, owner_id=user.pk, name="gone.txt", deleted=True)
    age(Event.objects.all(), days=40)

    call_command("prune_events", "--older-than", "30")

    assert Event.objects.count() == 0
    assert Notification.objects.count() == 0
    # The live upload's entry stays; the deleted one's tombstone has nothing left to guard.
    assert list(IndexEntry.objects.values_list("upload_id", flat=True)) == [kept_upload.pk]


@pytest.mark.django_db
def test_a_tombstone_stays_while_an_event_of_its_upload_is_kept(user):
    upload = upload_text(user)
    upload_id = upload.pk
    delete_upload(upload, actor=user)
    uploaded = Event.objects.get(aggregate_id=str(upload_id), type="file.uploaded")
    for event in Event.objects.all():
        finish(event)
    Delivery.objects.filter(event=uploaded, consumer="indexing").update(state="dead")
    IndexEntry.objects.create(upload_id=upload_id, owner_id=user.pk, name="x", deleted=True)
    age(Event.objects.all(), days=40)

    call_command("prune_events", "--older-than", "30")

    # file.deleted went; file.uploaded stays (dead, for replay), and so does the tombstone
    # that keeps its replay from indexing the deleted upload again.
    assert list(Event.objects.values_list("type", flat=True)) == ["file.uploaded"]
    assert IndexEntry.objects.filter(upload_id=upload_id, deleted=True).exists()


@pytest.mark.django_db
def test_retention_drops_webhook_rows_of_pruned_events_and_old_calls_by_age(user):
    from webhooks.models import Call, Endpoint, EndpointDelivery

    event = uploaded_event(user)
    finish(event)
    endpoint = Endpoint.objects.create(owner=user, url="http://127.0.0.1:9/hook", secret="s")
    EndpointDelivery.objects.create(event_id=event.pk, endpoint=endpoint, state="delivered")
    Call.objects.create(
        endpoint=endpoint, event_id=event.pk, event_type="file.uploaded", outcome="delivered"
    )
    ping = Call.objects.create(endpoint=endpoint, event_type="ping", outcome="delivered")
    Call.objects.filter(pk=ping.pk).update(created_at=timezone.now() - dt.timedelta(days=40))
    age(Event.objects.all(), days=40)

    prune_old_events()

    assert not EndpointDelivery.objects.exists()
    assert not Call.objects.exists()
