"""Stored files: kept whenever their upload committed, removed when it did not."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path
from unittest import mock

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile

from config.checks import storage_config_problem
from config.settings.storage import storages_for
from events.delivery import run_delivery
from events.models import Delivery, Event
from indexing.search import search
from tests.factories import deletion_consumers, settled, upload_consumers, upload_text
from tests.processes import wait_for
from uploads.events import FILE_DELETED, FILE_UPLOADED
from uploads.http import attachment_response
from uploads.models import Upload
from uploads.services import create_upload, delete_upload


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


# ------------------------------------------------------------------------------
# MEDIA_STORAGE=s3 against a real SeaweedFS
# ------------------------------------------------------------------------------
FIXTURES = Path(__file__).parent / "fixtures"
# Headers a download carries on either storage (uploads.http.attachment_response).
DOWNLOAD_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Content-Disposition",
    "X-Content-Type-Options",
    "Content-Security-Policy",
    "Cross-Origin-Resource-Policy",
    "Cache-Control",
    "Referrer-Policy",
)


def local_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()] if folder.exists() else []


@pytest.mark.django_db(transaction=True)
def test_s3_upload_index_search_download_delete_with_a_worker_sharing_no_directory(
    s3_worker, s3_media, signed_in, user, settings
):
    text = b"the zebra crossing is striped"
    pdf = (FIXTURES / "report.pdf").read_bytes()
    ids = {}
    for name, data in (("zebra.txt", text), ("pelican-report.pdf", pdf)):
        response = signed_in.post("/api/uploads/", {"file": SimpleUploadedFile(name, data)})
        assert response.status_code == 201, response.content
        ids[name] = response.json()["id"]
    # The objects are in the bucket, nothing is on this process's disk.
    stored = {Upload.objects.get(pk=pk).file.name for pk in ids.values()}
    assert set(s3_media.keys()) == stored
    assert local_files(Path(settings.MEDIA_ROOT)) == []

    for pk in ids.values():
        event = Event.objects.get(aggregate_id=str(pk), type=FILE_UPLOADED)
        assert wait_for(lambda e=event: settled(e), what="deliveries") == dict.fromkeys(
            upload_consumers(), "done"
        )
    # Indexed by the worker, which read both through S3 (the PDF in its child process).
    assert [hit.upload_id for hit in search(query="striped", owner_id=user.pk)] == [
        ids["zebra.txt"]
    ]
    assert [hit.upload_id for hit in search(query="albatross", owner_id=user.pk)] == [
        ids["pelican-report.pdf"]
    ]

    for name, data in (("zebra.txt", text), ("pelican-report.pdf", pdf)):
        response = signed_in.get(f"/api/uploads/{ids[name]}/download/")
        assert response.status_code == 200
        assert response.streaming
        assert b"".join(response.streaming_content) == data
        assert response["Content-Length"] == str(len(data))
        assert response["Content-Disposition"].startswith("attachment")
        assert response["X-Content-Type-Options"] == "nosniff"

    for pk in ids.values():
        assert signed_in.delete(f"/api/uploads/{pk}/").status_code == 204
        event = Event.objects.get(aggregate_id=str(pk), type=FILE_DELETED)
        assert wait_for(lambda e=event: settled(e), what="deletions") == dict.fromkeys(
            deletion_consumers(), "done"
        )
    assert s3_media.keys() == []


@pytest.mark.django_db
def test_a_download_from_s3_has_the_headers_of_a_local_one_and_streams(
    s3_media, seaweedfs, user, settings
):
    from_s3 = attachment_response(upload_text(user, "same bytes", name="page.html"))

    settings.STORAGES = storages_for("filesystem")
    on_disk = attachment_response(upload_text(user, "same bytes", name="page.html"))
    settings.STORAGES = storages_for("s3")

    assert {h: from_s3[h] for h in DOWNLOAD_HEADERS} == {h: on_disk[h] for h in DOWNLOAD_HEADERS}
    assert b"".join(from_s3.streaming_content) == b"same bytes"
    on_disk.close()


@pytest.mark.django_db
def test_an_s3_download_never_holds_the_file_in_memory(s3_media, user):
    size = 16 * 1024 * 1024
    upload = create_upload(owner=user, file=ContentFile(b"x" * size, name="big.txt"))
    upload = Upload.objects.get(pk=upload.pk)

    tracemalloc.start()
    try:
        response = attachment_response(upload)
        received = sum(len(block) for block in response.streaming_content)
        response.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert received == size
    # django-storages' own S3File downloads the whole object into memory first.
    assert peak < size / 8


@pytest.mark.django_db
def test_the_storage_consumer_removes_an_s3_object(s3_media, user):
    upload = upload_text(user)
    upload_id = upload.pk
    assert s3_media.keys() == [upload.file.name]
    delete_upload(upload, actor=user)
    assert s3_media.keys() == [upload.file.name]

    outcome = run_delivery(delivery_id=storage_delivery(upload_id).pk, consumer_name="storage")

    assert outcome.outcome == "done"
    assert s3_media.keys() == []


@pytest.mark.django_db
def test_reading_a_missing_s3_object_is_file_not_found(s3_media):
    with pytest.raises(FileNotFoundError):
        default_storage.open("uploads/none/missing", "rb")


# ------------------------------------------------------------------------------
# A storage configuration that cannot work refuses to start, in one line
# ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("media_storage", "bucket", "endpoint", "names"),
    [
        ("filesystem", "", "", None),
        ("s3", "media", "http://s3.internal:8333", None),
        ("disk", "", "", "MEDIA_STORAGE"),
        ("s3", "", "http://s3.internal:8333", "AWS_STORAGE_BUCKET_NAME"),
        ("s3", "media", "", "AWS_S3_ENDPOINT_URL"),
        ("s3", "media", "s3.internal:8333", "AWS_S3_ENDPOINT_URL"),
    ],
)
def test_storage_config_problems_name_the_setting(media_storage, bucket, endpoint, names):
    problem = storage_config_problem(
        media_storage=media_storage, bucket=bucket, endpoint_url=endpoint
    )

    assert (problem is None) == (names is None)
    if names:
        assert names in problem
        assert "\n" not in problem


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"MEDIA_STORAGE": "nfs"}, "MEDIA_STORAGE"),
        (
            {"MEDIA_STORAGE": "s3", "AWS_S3_ENDPOINT_URL": "http://s3.internal"},
            "AWS_STORAGE_BUCKET_NAME",
        ),
        ({"MEDIA_STORAGE": "s3", "AWS_STORAGE_BUCKET_NAME": "media"}, "AWS_S3_ENDPOINT_URL"),
    ],
)
def test_every_process_refuses_a_bad_storage_configuration_in_one_line(run_manage, env, setting):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MEDIA_STORAGE"))}
    result = run_manage(
        "check", env={**clean, "DJANGO_SETTINGS_MODULE": "config.settings.test", **env}
    )

    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("refusing to start: ")
    assert setting in result.stderr
