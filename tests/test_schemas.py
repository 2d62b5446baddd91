"""Event schemas and versions: declared in code, checked at publish, upcast before handling.

What the outbox and the worker tests already pin (an upload stores a v2 event; publish,
dedupe, retries, dead-lettering) is not repeated here.
"""

from __future__ import annotations

import dataclasses
import email
import uuid
from email import policy
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from audit.models import AuditEntry
from audit.services import payload_digest, verify_chain
from events.exceptions import InvalidEventError, PermanentError
from events.models import Delivery, Event
from events.outbox import publish_deliveries_now, record_event
from events.schemas import Envelope, schemas
from indexing.models import IndexEntry
from notifications.models import Notification
from tests.factories import settled, upload_consumers, upload_text
from tests.processes import wait_for
from uploads.events import FILE_DELETED, FILE_UPLOADED
from uploads.models import Upload

pytestmark = pytest.mark.django_db

V2_PAYLOAD = {
    "upload_id": 1,
    "owner_id": 1,
    "name": "a.txt",
    "size": 3,
    "storage_name": "uploads/a.txt",
    "content_type": "text/plain",
    "sha256": "0" * 64,
}


def stored_rows() -> tuple[int, int]:
    return Event.objects.count(), Delivery.objects.count()


# ------------------------------------------------------------------------------
# Declarations
# ------------------------------------------------------------------------------
def test_each_event_type_declares_its_payload_schema_per_version():
    assert {FILE_UPLOADED, FILE_DELETED} <= set(schemas.types())
    assert schemas.current_version(FILE_UPLOADED) == 2
    assert schemas.current_version(FILE_DELETED) == 2

    v1 = schemas.get(FILE_UPLOADED, 1)
    v2 = schemas.get(FILE_UPLOADED, 2)
    assert set(v1.fields) == {"upload_id", "owner_id", "name", "size", "storage_name"}
    assert set(v2.fields) == set(v1.fields) | {"content_type", "sha256"}
    assert (v1.upcast, v2.upcast is not None) == (None, True)
    assert set(schemas.get(FILE_DELETED, 1).fields) == {"upload_id", "owner_id", "name"}
    assert set(schemas.get(FILE_DELETED, 2).fields) == {
        "upload_id",
        "owner_id",
        "name",
        "storage_name",
    }


def test_a_later_version_without_an_upcaster_cannot_be_declared():
    with pytest.raises(ValueError, match="needs an upcaster from v2"):
        schemas.declare(dataclasses.replace(schemas.get(FILE_UPLOADED, 2), version=3, upcast=None))

    assert schemas.current_version(FILE_UPLOADED) == 2


def test_v1_payload_is_upcast_to_v2_with_a_guessed_type_and_no_digest():
    v1 = Envelope(
        id=uuid.uuid4(),
        type=FILE_UPLOADED,
        version=1,
        occurred_at=timezone.now(),
        aggregate_id="1",
        actor=None,
        payload={
            "upload_id": 1,
            "owner_id": 1,
            "name": "Report.PDF",
            "size": 10,
            "storage_name": "uploads/r.pdf",
        },
    )

    upcast = schemas.upcast(v1)

    assert upcast.version == 2
    assert upcast.payload == {**v1.payload, "content_type": "application/pdf", "sha256": ""}
    assert upcast.id == v1.id
    assert v1.payload.keys() == {"upload_id", "owner_id", "name", "size", "storage_name"}


# ------------------------------------------------------------------------------
# Validation at publish
# ------------------------------------------------------------------------------
BAD_PAYLOADS = [
    (
        FILE_UPLOADED,
        None,
        {k: v for k, v in V2_PAYLOAD.items() if k != "sha256"},
        "missing payload field(s) sha256",
    ),
    (FILE_UPLOADED, None, {**V2_PAYLOAD, "size": "3"}, "field 'size' must be int, got str"),
    (FILE_UPLOADED, None, {**V2_PAYLOAD, "owner_id": True}, "field 'owner_id' must be int"),
    (FILE_UPLOADED, None, {**V2_PAYLOAD, "path": "/etc"}, "unknown payload field(s) path"),
    (FILE_UPLOADED, 1, V2_PAYLOAD, "file.uploaded v1: unknown payload field(s)"),
    (FILE_UPLOADED, 3, V2_PAYLOAD, "unknown version 3 of event type 'file.uploaded'"),
    (FILE_DELETED, None, {"upload_id": 1, "owner_id": 1}, "missing payload field(s) name"),
    ("file.renamed", None, {"upload_id": 1}, "unknown event type 'file.renamed'"),
]


@pytest.mark.parametrize(
    ("event_type", "version", "payload", "message"),
    BAD_PAYLOADS,
    ids=[
        "missing-field",
        "wrong-type",
        "bool-for-int",
        "unknown-field",
        "v2-payload-as-v1",
        "unknown-version",
        "deleted-missing-name",
        "unknown-type",
    ],
)
def test_bad_payload_fails_at_publish_and_stores_nothing(event_type, version, payload, message):
    with pytest.raises(InvalidEventError) as raised, transaction.atomic():
        record_event(event_type=event_type, aggregate_id=1, payload=payload, version=version)

    assert message in str(raised.value)
    assert isinstance(raised.value, PermanentError)
    assert stored_rows() == (0, 0)


def test_producer_payload_that_breaks_the_schema_fails_the_upload_and_leaves_nothing(
    user, settings, monkeypatch
):
    # The schema now wants a field the producer does not send: a producer bug.
    current = schemas.get(FILE_UPLOADED, 2)
    stricter = dataclasses.replace(current, fields={**current.fields, "checksum": str})
    monkeypatch.setitem(schemas._schemas[FILE_UPLOADED], 2, stricter)

    with pytest.raises(InvalidEventError, match="missing payload field"):
        upload_text(user)

    assert not Upload.objects.exists()
    assert stored_rows() == (0, 0)
    assert [p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file()] == []


# ------------------------------------------------------------------------------
# Stored old versions and unknown events, through a real worker
# ------------------------------------------------------------------------------
def store_event(event_type: str, version: int, payload: dict[str, Any], consumers: list[str]):
    """Write an event and its deliveries as they would sit in the log, then publish them."""
    with transaction.atomic():
        event = Event.objects.create(
            id=uuid.uuid4(),
            type=event_type,
            version=version,
            occurred_at=timezone.now(),
            aggregate_id=str(payload.get("upload_id", "x")),
            payload=payload,
        )
        deliveries = [Delivery(event=event, consumer=name) for name in consumers]
        Delivery.objects.bulk_create(deliveries)
    publish_deliveries_now(list(Delivery.objects.filter(event=event).select_related("event")))
    return event


@pytest.mark.django_db(transaction=True)
def test_stored_v1_upload_event_is_handled_by_every_consumer(live_worker, user, settings):
    storage_name = default_storage.save(
        "uploads/legacy/field-notes.txt", ContentFile(b"kingfisher by the old mill")
    )
    v1_payload = {
        "upload_id": 901,
        "owner_id": user.pk,
        "name": "field-notes.txt",
        "size": 26,
        "storage_name": storage_name,
    }

    event = store_event(FILE_UPLOADED, 1, v1_payload, upload_consumers())

    assert wait_for(lambda: settled(event), what="v1 deliveries") == dict.fromkeys(
        upload_consumers(), "done"
    )
    assert Event.objects.get(pk=event.pk).version == 1  # stored as it was, upcast on reading
    entry = IndexEntry.objects.get(upload_id=901)
    assert (entry.name, entry.text, entry.owner_id) == (
        "field-notes.txt",
        "kingfisher by the old mill",
        user.pk,
    )
    audit = AuditEntry.objects.get(event_id=event.id)
    assert audit.payload_digest == payload_digest(
        {**v1_payload, "content_type": "text/plain", "sha256": ""}
    )
    assert verify_chain().broken is None
    notification = Notification.objects.get(event_id=event.id)
    assert (notification.state, notification.recipient) == ("sent", "alice@example.com")
    [mail_file] = Path(settings.EMAIL_FILE_PATH).iterdir()
    mail = email.message_from_bytes(mail_file.read_bytes(), policy=policy.default)
    assert "(26\xa0bytes, text/plain)" in mail.get_body(("plain",)).get_content()


@pytest.mark.django_db(transaction=True)
def test_newer_version_waits_for_the_upgrade_unknown_type_goes_dead_and_nothing_else_blocks(
    live_worker, user
):
    future = store_event(
        FILE_UPLOADED,
        9,
        {**V2_PAYLOAD, "upload_id": 9001, "owner_id": user.pk},
        upload_consumers(),
    )
    unknown = store_event("file.renamed", 1, {"upload_id": 9002}, ["audit"])
    healthy = Event.objects.get(aggregate_id=str(upload_text(user).pk), type=FILE_UPLOADED)

    # A rolling deploy: producers run newer code than these consumers. The deliveries
    # wait, retried without using up attempts, with the reason for operators.
    def waiting_for_upgrade() -> bool:
        rows = list(Delivery.objects.filter(event=future))
        return len(rows) == len(upload_consumers()) and all(
            d.state == "retrying" and "waiting for an upgrade" in d.last_error for d in rows
        )

    wait_for(waiting_for_upgrade, what="future-version deliveries to wait for the upgrade")
    for delivery in Delivery.objects.filter(event=future):
        assert delivery.attempts == 0, delivery.consumer
        assert delivery.last_error == (
            "NewerEventVersion: file.uploaded v9 is newer than this code knows (up to v2): "
            "waiting for an upgrade"
        )
    assert wait_for(lambda: settled(unknown), what="unknown-type delivery") == {"audit": "dead"}
    assert Delivery.objects.get(event=unknown).last_error == (
        "PermanentError: consumer 'audit' has no handler for event type 'file.renamed'"
    )
    assert not Notification.objects.filter(event_id=future.id).exists()
    assert not IndexEntry.objects.filter(upload_id=9001).exists()
    assert not AuditEntry.objects.filter(event_id__in=[future.id, unknown.id]).exists()

    # An ordinary upload published alongside is handled by every consumer.
    assert set(wait_for(lambda: settled(healthy), what="healthy deliveries").values()) == {"done"}
    assert AuditEntry.objects.filter(event_id=healthy.id).count() == 1
    assert Notification.objects.get(event_id=healthy.id).state == "sent"
    # Settle the waiting ones, so the worker has nothing left when the tables are emptied.
    Delivery.objects.filter(event=future).update(state="dead")
