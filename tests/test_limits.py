"""Per-user upload limits: a rate per minute (429 + Retry-After) and a byte quota (413).

Both are counted on the database from the user's own uploads, so every web host sees the
same counts; the service refuses, and the page and the API map its refusal.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from uploads.exceptions import UploadLimitExceeded, UploadRejected
from uploads.models import Upload
from uploads.services import create_upload
from uploads.tokens import create_api_token

pytestmark = pytest.mark.django_db

API = "/api/uploads/"
PAGE = "/uploads/new/"


def upload(owner: User, data: bytes = b"hello", name: str = "a.txt") -> Upload:
    return create_upload(owner=owner, file=ContentFile(data, name=name))


def a_file(data: bytes = b"hello", name: str = "a.txt") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="text/plain")


def test_defaults_are_far_beyond_a_normal_user(settings):
    assert settings.UPLOAD_RATE_PER_MINUTE >= 60
    assert settings.UPLOAD_QUOTA_BYTES >= 10 * 1024**3
    assert settings.UPLOAD_LIMITS_EXEMPT_STAFF is False


def test_the_service_refuses_past_the_rate_with_a_retry_after(settings, user):
    settings.UPLOAD_RATE_PER_MINUTE = 2
    upload(user)
    upload(user)

    with pytest.raises(UploadLimitExceeded) as refused:
        upload(user)

    assert refused.value.code == "rate_limited"
    assert refused.value.http_status == 429
    assert 1 <= int(refused.value.http_headers["Retry-After"]) <= 60
    assert isinstance(refused.value, UploadRejected)
    assert Upload.objects.filter(owner=user).count() == 2


def test_uploads_older_than_a_minute_do_not_count(settings, user):
    settings.UPLOAD_RATE_PER_MINUTE = 1
    upload(user)
    Upload.objects.filter(owner=user).update(created_at=timezone.now() - dt.timedelta(seconds=61))

    upload(user)

    assert Upload.objects.filter(owner=user).count() == 2


def test_the_rate_is_per_user(settings, user, other_user):
    settings.UPLOAD_RATE_PER_MINUTE = 1
    upload(user)

    upload(other_user)


def test_the_quota_counts_the_bytes_already_stored(settings, user):
    settings.UPLOAD_QUOTA_BYTES = 10
    upload(user, b"12345678")

    with pytest.raises(UploadLimitExceeded) as refused:
        upload(user, b"12345")

    assert refused.value.code == "quota_exceeded"
    assert refused.value.http_status == 413
    assert Upload.objects.filter(owner=user).count() == 1
    upload(user, b"12")  # exactly up to the quota is fine


def test_staff_are_limited_unless_exempted(settings):
    staff = User.objects.create_user("ops", "ops@example.com", "pw", is_staff=True)
    settings.UPLOAD_RATE_PER_MINUTE = 1
    upload(staff)
    with pytest.raises(UploadLimitExceeded):
        upload(staff)

    settings.UPLOAD_LIMITS_EXEMPT_STAFF = True
    upload(staff)


def test_the_page_answers_429_with_retry_after(settings, user):
    settings.UPLOAD_RATE_PER_MINUTE = 1
    client = Client()
    client.force_login(user)
    assert client.post(PAGE, {"file": a_file()}).status_code == 302

    response = client.post(PAGE, {"file": a_file()})

    assert response.status_code == 429
    assert int(response["Retry-After"]) >= 1
    assert "uploads per minute" in response.content.decode()

    scripted = client.post(PAGE, {"file": a_file()}, headers={"Accept": "application/json"})
    assert scripted.status_code == 429
    assert scripted.json()["error"]["code"] == "rate_limited"
    assert int(scripted["Retry-After"]) >= 1


def test_the_api_answers_429_and_413_with_codes(settings, user):
    _token, raw = create_api_token(user)
    api = Client(headers={"Authorization": f"Bearer {raw}"})
    settings.UPLOAD_RATE_PER_MINUTE = 1
    assert api.post(API, {"file": a_file()}).status_code == 201

    limited = api.post(API, {"file": a_file()})

    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert int(limited["Retry-After"]) >= 1

    settings.UPLOAD_RATE_PER_MINUTE = 100
    settings.UPLOAD_QUOTA_BYTES = 8
    over = api.post(API, {"file": a_file(b"123456")})
    assert over.status_code == 413
    assert over.json()["error"]["code"] == "quota_exceeded"
