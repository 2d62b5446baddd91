"""Delivery through a real Redis and a real Celery worker process."""

from __future__ import annotations

import time

import pytest
from django.core.management import call_command

from audit.models import AuditEntry
from events.models import Delivery, DeliveryAttempt, Event
from events.outbox import publish_deliveries_now
from indexing.models import IndexEntry
from notifications.models import Notification
from tests.factories import publish_probe, settled, states, upload_consumers, upload_text
from tests.probe.handlers import connection_marker
from tests.probe.models import ProbeEffect
from tests.processes import wait_for
from uploads.services import delete_upload

pytestmark = pytest.mark.django_db(transaction=True)


def test_upload_reaches_every_consumer_exactly_once(live_worker, user, settings):
    upload = upload_text(user, "hello from the outbox")

    event = Event.objects.get(aggregate_id=str(upload.pk), type="file.uploaded")
    assert wait_for(lambda: settled(event), what="all deliveries to finish") == dict.fromkeys(
        upload_consumers(), "done"
    )
    assert list(Delivery.objects.filter(event=event).values_list("attempts", flat=True)) == [
        1
    ] * len(upload_consumers())
    assert Notification.objects.get(event_id=event.id).recipient == "alice@example.com"
    assert IndexEntry.objects.get(upload_id=upload.pk).text == "hello from the outbox"
    assert AuditEntry.objects.filter(event_id=event.id).count() == 1
    assert len(list(settings.EMAIL_FILE_PATH.iterdir())) == 1


def test_deleted_upload_reaches_every_consumer_and_leaves_the_index(live_worker, user):
    upload = upload_text(user, "short-lived")
    uploaded = Event.objects.get(aggregate_id=str(upload.pk), type="file.uploaded")
    wait_for(lambda: settled(uploaded), what="upload deliveries")

    upload_id = upload.pk
    delete_upload(upload, actor=user)

    deleted = Event.objects.get(aggregate_id=str(upload_id), type="file.deleted")
    assert set(wait_for(lambda: settled(deleted), what="delete deliveries").values()) == {"done"}
    entry = IndexEntry.objects.get(upload_id=upload_id)
    assert entry.deleted and entry.text == ""
    assert Notification.objects.filter(event_id=deleted.id).count() == 1
    assert AuditEntry.objects.count() == 2


def test_upload_succeeds_while_redis_is_down_and_relay_delivers_once_it_returns(
    live_worker, redis_server, user
):
    redis_server.stop()
    try:
        upload = upload_text(user, "written during an outage")
        event = Event.objects.get(aggregate_id=str(upload.pk))
        # The upload committed; its deliveries wait in the outbox, never enqueued.
        assert states(event) == dict.fromkeys(upload_consumers(), "pending")
        assert not Delivery.objects.filter(event=event, enqueued_at__isnull=False).exists()
        call_command("event_status")  # readable while the broker is down
    finally:
        redis_server.start()

    time.sleep(2.1)  # past the grace period in which the on-commit publish owns a delivery
    call_command("relay_outbox", "--once")

    assert set(wait_for(lambda: settled(event), what="relayed deliveries").values()) == {"done"}
    assert Notification.objects.filter(event_id=event.id).count() == 1
    assert AuditEntry.objects.filter(event_id=event.id).count() == 1
    assert IndexEntry.objects.filter(upload_id=upload.pk).count() == 1


def test_message_delivered_twice_produces_one_effect(live_worker, user):
    upload = upload_text(user)
    event = Event.objects.get(aggregate_id=str(upload.pk))
    deliveries = list(Delivery.objects.filter(event=event).select_related("event"))
    # Two extra messages per delivery, racing the one sent on commit.
    publish_deliveries_now(deliveries)
    publish_deliveries_now(deliveries)
    wait_for(lambda: settled(event), what="deliveries")
    time.sleep(1)  # let the duplicate messages run too

    assert Notification.objects.filter(event_id=event.id).count() == 1
    assert AuditEntry.objects.filter(event_id=event.id).count() == 1
    assert IndexEntry.objects.filter(upload_id=upload.pk).count() == 1
    assert all(d.attempts == 1 for d in Delivery.objects.filter(event=event))


def test_forced_reenqueue_of_a_done_delivery_changes_nothing(live_worker):
    event = publish_probe()
    wait_for(lambda: settled(event), what="probe deliveries")
    publish_deliveries_now(list(Delivery.objects.filter(event=event).select_related("event")))
    time.sleep(1)

    assert ProbeEffect.objects.filter(event_id=event.id, consumer="probe").count() == 1
    assert ProbeEffect.objects.filter(event_id=event.id, consumer="probe_peer").count() == 1


def test_transient_failures_are_retried_with_backoff_until_success(live_worker, running_relay):
    event = publish_probe(transient_failures={"probe": 2})

    assert wait_for(lambda: settled(event), what="retries") == {
        "probe": "done",
        "probe_peer": "done",
    }
    delivery = Delivery.objects.get(event=event, consumer="probe")
    assert delivery.attempts == 3
    assert list(delivery.tries.values_list("outcome", flat=True)) == ["retry", "retry", "done"]
    assert ProbeEffect.objects.filter(event_id=event.id, consumer="probe").count() == 1


def test_permanent_error_goes_dead_at_once_and_does_not_block_other_consumers(live_worker):
    event = publish_probe(permanent_failures=["probe"])

    assert wait_for(lambda: settled(event), what="deliveries") == {
        "probe": "dead",
        "probe_peer": "done",
    }
    dead = Delivery.objects.get(event=event, consumer="probe")
    assert dead.attempts == 1
    assert "refused on purpose" in dead.last_error
    assert not ProbeEffect.objects.filter(event_id=event.id, consumer="probe").exists()
    assert ProbeEffect.objects.filter(event_id=event.id, consumer="probe_peer").count() == 1


def test_exhausted_retries_go_dead_with_the_reason_and_attempt_count(live_worker, running_relay):
    event = publish_probe(transient_failures={"probe": 99})

    assert wait_for(lambda: settled(event), what="retries to run out")["probe"] == "dead"
    dead = Delivery.objects.get(event=event, consumer="probe")
    assert dead.attempts == 4  # the probe consumer's max_attempts
    assert dead.last_error.startswith("gave up after 4 attempts: TransientError")
    assert DeliveryAttempt.objects.filter(delivery=dead).count() == 4


def test_worker_keeps_its_database_connection_across_tasks(live_worker):
    # Celery's Django fixup reconnects before and after every task unless told not to;
    # a reconnect per task cost more than a delivery's own queries.
    keys = []
    for _ in range(6):
        event = publish_probe()
        wait_for(lambda event=event: settled(event), what="probe deliveries")
        keys.append(event.payload["key"])

    # Connections each process had opened by each of these tasks (counted since it
    # started, perhaps long before this test).
    opened_by_process: dict[str, list[int]] = {}
    for key in keys:
        for consumer in ("probe", "probe_peer"):
            pid, opened = connection_marker(key, consumer).read_text().split()
            opened_by_process.setdefault(pid, []).append(int(opened))
    assert sum(len(counts) for counts in opened_by_process.values()) == 12
    # Across these tasks each process opened at most one more (its old one too old to keep).
    assert all(max(counts) - min(counts) <= 1 for counts in opened_by_process.values()), (
        opened_by_process
    )
