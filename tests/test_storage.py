"""Stored files: kept whenever their upload committed, removed when it did not."""

from __future__ import annotations

from unittest import mock

import pytest
from django.core.files.storage import default_storage

from tests.factories import upload_text
from uploads.models import Upload


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
