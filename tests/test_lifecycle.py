"""Deleting leaves nothing behind, and nothing is recorded twice.

Deleting a user who still has uploads is refused (``Upload.owner`` is protected): the
uploads go first, each through ``delete_upload``, so files, index and events follow.
Deleting an upload that is already gone is a clear error and records nothing.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.models import User
from django.db import connections
from django.db.models import ProtectedError
from django.test import Client
from django.urls import reverse

from audit.models import AuditEntry
from events.models import Event
from tests.factories import settled, upload_text
from tests.processes import wait_for
from uploads.admin import UploadAdmin
from uploads.events import FILE_DELETED, FILE_UPLOADED
from uploads.exceptions import UploadGone
from uploads.models import Upload
from uploads.services import delete_upload

pytestmark = pytest.mark.django_db


def stored_files() -> list[Path]:
    return [path for path in Path(settings.MEDIA_ROOT).rglob("*") if path.is_file()]


def mails() -> list[str]:
    return [path.read_text() for path in sorted(Path(settings.EMAIL_FILE_PATH).iterdir())]


def deleted_events(upload_id: int) -> int:
    return Event.objects.filter(type=FILE_DELETED, aggregate_id=str(upload_id)).count()


# ------------------------------------------------------------------------------
# Deleting a user
# ------------------------------------------------------------------------------
def test_deleting_a_user_with_uploads_is_refused_and_keeps_everything(user):
    upload = upload_text(user)

    with pytest.raises(ProtectedError, match=r"Upload\.owner"):
        user.delete()

    assert User.objects.filter(pk=user.pk).exists()
    assert Upload.objects.filter(pk=upload.pk).exists()
    assert len(stored_files()) == 1


def test_a_user_whose_uploads_were_deleted_can_be_deleted(user):
    upload = upload_text(user)
    delete_upload(upload, actor=None)

    user.delete()

    assert not User.objects.filter(pk=user.pk).exists()


def test_admin_user_delete_says_the_uploads_must_go_first(admin_client, user):
    upload_text(user, name="keep-me.txt")

    response = admin_client.post(reverse("admin:auth_user_delete", args=[user.pk]), {"post": "yes"})

    assert response.status_code == 200
    html = response.content.decode()
    assert "protected" in html and "keep-me.txt" in html
    assert User.objects.filter(pk=user.pk).exists()


def test_admin_bulk_user_delete_is_refused_too(admin_client, user):
    upload_text(user)

    admin_client.post(
        reverse("admin:auth_user_changelist"),
        {"action": "delete_selected", "_selected_action": [user.pk], "post": "yes"},
    )

    assert User.objects.filter(pk=user.pk).exists()
    assert Upload.objects.filter(owner=user).count() == 1


# ------------------------------------------------------------------------------
# Deleting the same upload twice
# ------------------------------------------------------------------------------
def test_second_delete_of_a_stale_object_is_a_clear_error_and_records_nothing(user):
    upload = upload_text(user)
    stale = Upload.objects.get(pk=upload.pk)
    delete_upload(upload, actor=user)

    with pytest.raises(UploadGone, match=f"upload {stale.pk} was already deleted"):
        delete_upload(stale, actor=user)

    assert deleted_events(stale.pk) == 1


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_deletes_of_one_upload_record_one_file_deleted(user):
    upload = upload_text(user)
    upload_id = upload.pk
    # two requests, each holding its own copy of the row, delete at the same moment
    copies = [Upload.objects.get(pk=upload_id) for _ in range(2)]
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def delete(copy: Upload) -> None:
        try:
            start.wait()
            delete_upload(copy, actor=user)
            outcomes.append("deleted")
        except UploadGone:
            outcomes.append("gone")
        except BaseException as exc:  # reported below, in the test's thread
            outcomes.append(repr(exc))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=delete, args=(copy,)) for copy in copies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(outcomes) == ["deleted", "gone"]
    assert deleted_events(upload_id) == 1


def test_second_api_delete_is_404_and_records_nothing(user, monkeypatch):
    upload = upload_text(user)
    client = Client()
    client.force_login(user)
    stale = Upload.objects.get(pk=upload.pk)
    delete_upload(upload, actor=user)
    # the second request read the row before the first deleted it (a retry, two tabs)
    monkeypatch.setattr("uploads.api.get_owned_upload", lambda owner, upload_id: stale)

    response = client.delete(f"/api/uploads/{stale.pk}/")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert deleted_events(stale.pk) == 1


def test_second_page_delete_is_404_and_records_nothing(user):
    upload = upload_text(user)
    client = Client()
    client.force_login(user)

    first = client.post(f"/uploads/{upload.pk}/delete/")
    second = client.post(f"/uploads/{upload.pk}/delete/")

    assert first.status_code == 302
    assert second.status_code == 404
    assert deleted_events(upload.pk) == 1


def test_admin_delete_of_an_upload_already_gone_records_nothing(admin_user, user, rf):
    upload = upload_text(user)
    stale = Upload.objects.get(pk=upload.pk)
    delete_upload(upload, actor=user)
    told: list[str] = []
    model_admin = UploadAdmin(Upload, admin.site)
    model_admin.message_user = lambda request, message, *args, **kwargs: told.append(message)
    request = rf.post("/admin/")
    request.user = admin_user

    model_admin.delete_model(request, stale)
    model_admin.delete_queryset(request, Upload.objects.filter(pk=stale.pk))

    assert deleted_events(stale.pk) == 1
    assert told and "already deleted" in told[0]


@pytest.mark.django_db(transaction=True)
def test_deleting_twice_through_the_api_mails_and_audits_once(live_worker, user):
    upload = upload_text(user, name="twice.txt")
    wait_for(lambda: settled(Event.objects.get(type=FILE_UPLOADED, aggregate_id=str(upload.pk))))
    client = Client()
    client.force_login(user)

    first = client.delete(f"/api/uploads/{upload.pk}/")
    second = client.delete(f"/api/uploads/{upload.pk}/")

    assert (first.status_code, second.status_code) == (204, 404)
    # the one file.deleted is handled by every consumer: a positive sign they ran
    deleted = Event.objects.get(type=FILE_DELETED, aggregate_id=str(upload.pk))
    assert set(wait_for(lambda: settled(deleted), what="file.deleted").values()) == {"done"}
    deleted_mails = [text for text in mails() if "Subject: Deleted: twice.txt" in text]
    assert len(deleted_mails) == 1
    assert AuditEntry.objects.filter(event_type=FILE_DELETED, upload_id=str(upload.pk)).count() == 1
    assert stored_files() == []
