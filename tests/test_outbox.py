"""The transactional outbox: what a producer's transaction stores and publishes."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from unittest import mock

import pytest
from celery import current_app
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from events.delivery import retry_countdown
from events.models import Delivery, Event
from events.outbox import record_event
from events.registry import all_consumers, consumers_for
from events.relay import due_delivery_ids, relay_outbox
from tests.factories import deletion_consumers, upload_consumers, upload_text
from uploads.events import FILE_UPLOADED
from uploads.models import Upload
from uploads.services import delete_upload

pytestmark = pytest.mark.django_db


def stored_files(settings) -> list[Path]:
    return [path for path in Path(settings.MEDIA_ROOT).rglob("*") if path.is_file()]


def test_upload_stores_event_and_one_pending_delivery_per_consumer(user):
    upload = upload_text(user, "abc")

    event = Event.objects.get(aggregate_id=str(upload.pk))
    assert (event.type, event.version, event.actor) == ("file.uploaded", 2, user.pk)
    assert event.payload["sha256"] == upload.sha256
    assert event.payload["storage_name"] == upload.file.name
    assert sorted(Delivery.objects.filter(event=event).values_list("consumer", "state")) == sorted(
        (name, "pending") for name in upload_consumers()
    )


def test_commit_enqueues_one_task_per_consumer_on_its_own_queue(
    user, sent_tasks, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        upload = upload_text(user)

    published = {call.args[0]: call.kwargs["queue"] for call in sent_tasks.call_args_list}
    assert published == {c.task_name: c.queue for c in consumers_for(FILE_UPLOADED)}
    assert len(set(published.values())) == len(published)  # each on its own queue
    event = Event.objects.get(aggregate_id=str(upload.pk))
    kwargs = sent_tasks.call_args_list[0].kwargs["kwargs"]
    assert set(kwargs) == {"delivery_id", "event_id", "event_type"}
    assert kwargs["event_id"] == str(event.id)
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert not Delivery.objects.filter(event=event, enqueued_at__isnull=True).exists()


def test_a_publish_that_fails_leaves_the_deliveries_unenqueued_for_the_relay(
    user, django_capture_on_commit_callbacks
):
    with (
        mock.patch.object(current_app, "send_task", side_effect=ConnectionError("broker down")),
        django_capture_on_commit_callbacks(execute=True),
    ):
        upload = upload_text(user)

    event = Event.objects.get(aggregate_id=str(upload.pk))
    assert Delivery.objects.filter(event=event, enqueued_at__isnull=True).count() == len(
        upload_consumers()
    )


def test_nothing_is_published_before_commit(user, sent_tasks, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        upload_text(user)

    assert len(callbacks) == 1
    sent_tasks.assert_not_called()


def test_failed_upload_transaction_publishes_nothing_and_leaves_no_file(
    user, settings, sent_tasks, django_capture_on_commit_callbacks
):
    with (
        mock.patch("uploads.services.record_event", side_effect=RuntimeError("database went away")),
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(RuntimeError, match="database went away"),
    ):
        upload_text(user)

    assert not Upload.objects.exists()
    assert not Event.objects.exists()
    assert not Delivery.objects.exists()
    assert stored_files(settings) == []
    sent_tasks.assert_not_called()


@pytest.mark.django_db(transaction=True)
def test_upload_inside_a_callers_transaction_is_refused(user, settings):
    # A caller's later rollback would leave the stored file behind, so it is refused.
    with pytest.raises(RuntimeError), transaction.atomic():
        upload_text(user)

    assert not Upload.objects.exists()
    assert not Event.objects.exists()
    assert stored_files(settings) == []


def test_recording_an_event_outside_a_transaction_is_refused():
    with (
        mock.patch("events.outbox.connection.in_atomic_block", False),
        pytest.raises(RuntimeError, match=r"inside transaction\.atomic"),
    ):
        record_event(
            event_type="file.deleted",
            aggregate_id=1,
            payload={"upload_id": 1, "owner_id": 1, "name": "a"},
        )


def test_deleted_upload_keeps_its_file_for_the_storage_consumer(
    user, settings, django_capture_on_commit_callbacks
):
    upload = upload_text(user)
    upload_id, storage_name = upload.pk, upload.file.name

    with django_capture_on_commit_callbacks(execute=True):
        delete_upload(upload, actor=user)

    # The storage consumer removes it (tests/test_storage.py), retrying until it can.
    assert len(stored_files(settings)) == 1
    event = Event.objects.get(aggregate_id=str(upload_id), type="file.deleted")
    assert event.payload == {
        "upload_id": upload_id,
        "owner_id": user.pk,
        "name": "notes.txt",
        "storage_name": storage_name,
    }
    assert Delivery.objects.filter(event=event).count() == len(deletion_consumers())


def due_ids() -> set[int]:
    names = [consumer.name for consumer in all_consumers()]
    return set(due_delivery_ids(names, limit=1000))


def test_relay_takes_unsent_due_and_expired_deliveries_only(user):
    upload_text(user)
    now = timezone.now()
    long_ago = now - dt.timedelta(minutes=10)
    never, retry, queued, *others = Delivery.objects.order_by("pk")
    # Every delivery starts sent long ago; the first three then differ.
    Delivery.objects.update(created_at=long_ago, enqueued_at=long_ago)
    Delivery.objects.filter(pk=never.pk).update(enqueued_at=None)
    # ``queued`` was sent long ago: it waits in its queue, however long (whether the
    # broker still has it is for the counts of ``heal_lost_messages``).

    assert due_ids() == {never.pk}

    # A retry waits, with no message out, for its time; then it is due.
    Delivery.objects.filter(pk=retry.pk).update(
        state="retrying", enqueued_at=None, retry_at=now + dt.timedelta(seconds=30)
    )
    assert due_ids() == {never.pk}
    Delivery.objects.filter(pk=retry.pk).update(retry_at=now - dt.timedelta(seconds=1))
    assert due_ids() == {never.pk, retry.pk}
    Delivery.objects.filter(pk=retry.pk).update(enqueued_at=now)
    assert due_ids() == {never.pk}

    # A running attempt is left alone until its lease expires; then it is sent once.
    Delivery.objects.filter(pk=queued.pk).update(
        state="running", lease_expires_at=now + dt.timedelta(seconds=30)
    )
    assert due_ids() == {never.pk}
    Delivery.objects.filter(pk=queued.pk).update(lease_expires_at=now - dt.timedelta(seconds=1))
    assert due_ids() == {never.pk, queued.pk}
    Delivery.objects.filter(pk=queued.pk).update(enqueued_at=now)
    assert due_ids() == {never.pk}

    # Finished deliveries are never relayed.
    Delivery.objects.filter(pk=never.pk).update(state="done")
    assert others, "the upload has a delivery per consumer"
    assert due_ids() == set()


def test_a_delivery_just_created_is_left_to_its_own_on_commit_publish(user):
    upload_text(user)
    assert due_ids() == set()


def test_relay_outbox_publishes_what_was_never_enqueued(user, sent_tasks):
    upload_text(user)
    long_ago = timezone.now() - dt.timedelta(minutes=5)
    Delivery.objects.update(created_at=long_ago, enqueued_at=None)

    result = relay_outbox()

    assert (result.published, result.broker_failed) == (len(upload_consumers()), False)
    assert sent_tasks.call_count == len(upload_consumers())
    assert not Delivery.objects.filter(enqueued_at__isnull=True).exists()
    assert relay_outbox().published == 0


def test_retry_countdown_grows_exponentially_with_jitter_up_to_a_cap(settings):
    settings.EVENTS_RETRY_BACKOFF_SECONDS = 2
    settings.EVENTS_RETRY_BACKOFF_MAX_SECONDS = 60

    for attempts, ceiling in [(1, 2), (2, 4), (3, 8), (6, 60), (30, 60)]:
        samples = [retry_countdown(attempts) for _ in range(50)]
        assert all(ceiling / 2 <= s <= ceiling for s in samples)
        assert len(set(samples)) > 1


def test_event_status_json_has_the_documented_shape(user, capsys):
    upload_text(user)
    # As after a publish that failed: the deliveries wait in the outbox.
    Delivery.objects.update(enqueued_at=None)
    Delivery.objects.filter(consumer="audit").update(state="dead")
    Delivery.objects.filter(consumer="indexing").update(state="running")

    call_command("event_status", "--json")

    status = json.loads(capsys.readouterr().out)
    assert status["events"] == {"total": 1, "unenqueued": 1}
    assert list(status["consumers"]) == [c.name for c in all_consumers()]
    assert set(status["consumers"]["notifications"]) == {
        "done",
        "pending",
        "retrying",
        "dead",
        "oldest_pending_seconds",
        "paused",
        "paused_reason",
        "paused_seconds",
        "breakers_open",
    }
    assert status["consumers"]["notifications"]["paused"] is False
    assert status["consumers"]["notifications"]["pending"] == 1
    assert status["consumers"]["notifications"]["oldest_pending_seconds"] >= 0
    assert status["consumers"]["audit"]["dead"] == 1
    # running (an attempt holds the lease) is not done yet: it counts as pending
    assert status["consumers"]["indexing"]["pending"] == 1
    assert status["consumers"]["audit"]["oldest_pending_seconds"] is None


def test_event_status_prints_a_table_by_default(user, capsys):
    upload_text(user)
    Delivery.objects.update(enqueued_at=None)

    call_command("event_status")

    out = capsys.readouterr().out
    assert "events: 1 total, 1 with no message out" in out
    assert out.splitlines()[1].split() == [
        "consumer",
        "done",
        "pending",
        "retrying",
        "dead",
        "oldest_pending_seconds",
        "held",
    ]
