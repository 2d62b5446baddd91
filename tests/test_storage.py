"""Stored files: kept whenever their upload committed, removed when it did not."""

from __future__ import annotations

from unittest import mock

import pytest
from django.core.files.storage import default_storage

from events.delivery import run_delivery
from events.models import Delivery
from tests.factories import upload_text
from uploads.events import FILE_DELETED
from uploads.models import Upload
from uploads.services import delete_upload


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("raised", [SystemExit(1), KeyboardInterrupt()])
def test_a_committed_upload_keeps_its_file_whatever_is_raised_after_commit(user, raised):
    # gunicorn aborts a worker by raising SystemExit, which Django's robust on-commit
    # callbacks (Exception only) let through: here, in the middle of publishing.
    with (
        mock.patch("events.outbox.publish_committed", side_effect=raised),
        pytest.raises(type(raised)),
    ):
        upload_text(user)

    upload = Upload.objects.get()
    assert default_storage.exists(upload.file.name)
    with upload.file.open("rb") as handle:
        assert handle.read() == b"the quick brown fox"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("raised", [SystemExit(1), RuntimeError("database went away")])
def test_an_upload_that_did_not_commit_leaves_no_file_whatever_is_raised(user, raised):
    with (
        mock.patch("uploads.services.record_event", side_effect=raised),
        pytest.raises(type(raised)),
    ):
        upload_text(user)

    assert not Upload.objects.exists()
    assert stored_names() == []


def stored_names(folder: str = "") -> list[str]:
    """Every name in default storage under ``folder``, through the storage API only."""
    try:
        folders, files = default_storage.listdir(folder)
    except FileNotFoundError:
        return []
    names = [f"{folder}/{name}".lstrip("/") for name in files]
    for sub in folders:
        names += stored_names(f"{folder}/{sub}".lstrip("/"))
    return sorted(names)


# ------------------------------------------------------------------------------
# The storage consumer removes a deleted upload's file, after commit, until it can
# ------------------------------------------------------------------------------
def storage_delivery(upload_id: int) -> Delivery:
    return Delivery.objects.get(
        event__type=FILE_DELETED, event__aggregate_id=str(upload_id), consumer="storage"
    )


@pytest.mark.django_db
def test_the_storage_consumer_removes_the_file_of_a_deleted_upload(user):
    upload = upload_text(user)
    upload_id, name = upload.pk, upload.file.name
    delete_upload(upload, actor=user)
    assert default_storage.exists(name)  # the transaction only records file.deleted

    outcome = run_delivery(delivery_id=storage_delivery(upload_id).pk, consumer_name="storage")

    assert outcome.outcome == "done"
    assert not default_storage.exists(name)
    # Done again (a replay) is still done: the file is already gone.
    delivery = storage_delivery(upload_id)
    Delivery.objects.filter(pk=delivery.pk).update(state="pending")
    assert run_delivery(delivery_id=delivery.pk, consumer_name="storage").outcome == "done"


@pytest.mark.django_db
def test_a_failed_delete_retries_visibly_until_the_store_takes_it(user):
    upload = upload_text(user)
    upload_id, name = upload.pk, upload.file.name
    delete_upload(upload, actor=user)
    delivery = storage_delivery(upload_id)

    with mock.patch.object(
        type(default_storage._wrapped), "delete", side_effect=OSError("store unreachable")
    ):
        outcome = run_delivery(delivery_id=delivery.pk, consumer_name="storage")

    assert outcome.outcome == "retry"
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("retrying", 1)
    assert "store unreachable" in delivery.last_error
    assert default_storage.exists(name)

    Delivery.objects.filter(pk=delivery.pk).update(retry_at=None)
    assert run_delivery(delivery_id=delivery.pk, consumer_name="storage").outcome == "done"
    assert not default_storage.exists(name)
