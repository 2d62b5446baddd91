"""The JSON API at /api/: tokens, session + CSRF, errors, pagination, uploads and deletes.

Most tests run inside the test transaction: what an upload publishes on commit is never
sent. One test drives a real worker to watch every delivery reach ``done`` through GET.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.crypto import get_random_string

from events.models import Delivery, Event
from tests.factories import deletion_consumers, upload_consumers, upload_text
from tests.processes import wait_for
from uploads.models import ApiToken, Upload
from uploads.tokens import create_api_token, revoke_api_token, user_for_token

pytestmark = pytest.mark.django_db

LIST_URL = "/api/uploads/"


def detail_url(upload_id: int) -> str:
    return f"/api/uploads/{upload_id}/"


def download_url(upload_id: int) -> str:
    return f"/api/uploads/{upload_id}/download/"


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


def error_of(response: Any) -> dict[str, str]:
    """The ``error`` object of a JSON error response (and it is JSON)."""
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    return body["error"]


def a_file(content: bytes = b"hello api", name: str = "hello.txt") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="text/plain")


@pytest.fixture
def raw_token(user: User) -> str:
    _token, raw = create_api_token(user, name="tests")
    return raw


@pytest.fixture
def api(raw_token: str) -> Client:
    """A client that authenticates with alice's token and enforces CSRF like a browser."""
    return Client(enforce_csrf_checks=True, headers=bearer(raw_token))


@pytest.fixture
def session_client(user: User) -> Client:
    """Alice signed in with a session, with CSRF checks on."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def with_csrf(client: Client) -> dict[str, str]:
    """Give ``client`` a CSRF cookie and return the header that matches it."""
    secret = get_random_string(32)
    client.cookies[django_settings.CSRF_COOKIE_NAME] = secret
    return {"X-CSRFToken": secret}


# ------------------------------------------------------------------------------
# Tokens
# ------------------------------------------------------------------------------
def test_token_is_stored_only_as_its_hash(user):
    token, raw = create_api_token(user, name="laptop")

    token.refresh_from_db()
    assert raw.startswith("upl_") and len(raw) > 40
    assert token.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert token.key_prefix == raw[:8]
    stored = json.dumps(list(ApiToken.objects.values()), default=str)
    assert raw not in stored


def test_token_identifies_its_user_and_nothing_else_does(user, raw_token):
    assert user_for_token(raw_token) == user
    assert user_for_token(raw_token + "x") is None
    assert user_for_token(raw_token[:-1]) is None
    assert user_for_token("") is None
    assert user_for_token(None) is None
    assert user_for_token("upl_" + "a" * 5000) is None


def test_last_used_is_written_at_most_once_a_minute(user, raw_token):
    token = ApiToken.objects.get(user=user)
    assert token.last_used_at is None

    user_for_token(raw_token)
    token.refresh_from_db()
    first = token.last_used_at
    assert first is not None

    user_for_token(raw_token)
    token.refresh_from_db()
    assert token.last_used_at == first

    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first - timedelta(minutes=2))
    user_for_token(raw_token)
    token.refresh_from_db()
    assert token.last_used_at > first - timedelta(minutes=2)


# ------------------------------------------------------------------------------
# Authentication
# ------------------------------------------------------------------------------
@pytest.mark.parametrize("url", [LIST_URL, detail_url(1), download_url(1)])
def test_anonymous_request_is_401_with_bearer_challenge(client, url):
    response = client.get(url)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert error_of(response)["code"] == "not_authenticated"


@pytest.mark.parametrize(
    "header",
    [
        "Bearer upl_not-a-real-token-at-all-000000000000000000",
        "Bearer ",
        "Bearer",
        "Token upl_abc",
        "Basic YWxpY2U6cGFzc3dvcmQ=",
    ],
)
def test_invalid_credentials_are_401(client, header):
    response = client.get(LIST_URL, headers={"Authorization": header})

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert error_of(response)["code"] == "invalid_token"


def test_revoked_token_is_401(client, user, raw_token):
    revoke_api_token(ApiToken.objects.get(user=user))

    response = client.get(LIST_URL, headers=bearer(raw_token))

    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_token"


def test_deleted_token_is_401(client, user, raw_token):
    ApiToken.objects.filter(user=user).delete()

    assert client.get(LIST_URL, headers=bearer(raw_token)).status_code == 401


def test_inactive_users_token_is_401(client, user, raw_token):
    user.is_active = False
    user.save()

    assert client.get(LIST_URL, headers=bearer(raw_token)).status_code == 401


def test_bad_token_is_401_even_with_a_session(session_client):
    # A client that sends a header means it; falling back to the cookie would hide the bug.
    response = session_client.get(LIST_URL, headers=bearer("upl_wrong"))

    assert response.status_code == 401


def test_bearer_post_needs_no_csrf_token(api):
    response = api.post(LIST_URL, {"file": a_file()})

    assert response.status_code == 201


def test_session_get_needs_no_csrf_token(session_client, user):
    upload_text(user)

    response = session_client.get(LIST_URL)

    assert response.status_code == 200
    assert response.json()["count"] == 1


def test_session_post_without_csrf_token_is_403_json(session_client):
    response = session_client.post(LIST_URL, {"file": a_file()})

    assert response.status_code == 403
    assert error_of(response)["code"] == "csrf_failed"
    assert not Upload.objects.exists()


def test_session_post_with_csrf_token_is_201(session_client):
    headers = with_csrf(session_client)

    response = session_client.post(LIST_URL, {"file": a_file()}, headers=headers)

    assert response.status_code == 201


def test_session_delete_without_csrf_token_is_403_and_keeps_the_upload(session_client, user):
    upload = upload_text(user)

    response = session_client.delete(detail_url(upload.pk))

    assert response.status_code == 403
    assert error_of(response)["code"] == "csrf_failed"
    assert Upload.objects.filter(pk=upload.pk).exists()


def test_session_delete_with_csrf_token_is_204(session_client, user):
    upload = upload_text(user)
    headers = with_csrf(session_client)

    response = session_client.delete(detail_url(upload.pk), headers=headers)

    assert response.status_code == 204


# ------------------------------------------------------------------------------
# Listing and pagination
# ------------------------------------------------------------------------------
def test_list_shows_own_uploads_newest_first_in_the_documented_shape(api, user, other_user):
    older = upload_text(user, "one", name="one.txt")
    newer = upload_text(user, "two", name="two.md")
    upload_text(other_user, "not yours", name="bob.txt")

    response = api.get(LIST_URL)

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert body["next"] is None and body["previous"] is None
    assert [item["id"] for item in body["results"]] == [newer.pk, older.pk]
    item = body["results"][0]
    assert set(item) >= {"id", "name", "size", "content_type", "created_at", "deliveries"}
    assert (item["name"], item["size"]) == ("two.md", 3)
    assert timezone.datetime.fromisoformat(item["created_at"].replace("Z", "+00:00"))
    assert set(item["deliveries"]) == set(upload_consumers())
    assert set(item["deliveries"].values()) == {"pending"}


def test_empty_list_is_page_one_with_nothing(api):
    response = api.get(LIST_URL)

    assert response.json() == {"count": 0, "next": None, "previous": None, "results": []}


def test_pages_link_to_each_other_and_keep_page_size(api, user):
    uploads = [upload_text(user, f"file {n}", name=f"{n}.txt") for n in range(5)]
    newest_first = [u.pk for u in reversed(uploads)]

    first = api.get(LIST_URL, {"page_size": 2}).json()
    second = api.get(first["next"]).json()
    last = api.get(second["next"]).json()

    assert first["count"] == 5
    assert first["previous"] is None
    assert first["next"].startswith("http://testserver/api/uploads/?")
    assert "page_size=2" in first["next"] and "page=2" in first["next"]
    assert [i["id"] for i in first["results"] + second["results"] + last["results"]] == (
        newest_first
    )
    assert last["next"] is None
    assert api.get(second["previous"]).json() == first


def test_page_size_above_the_maximum_is_refused_not_silently_capped(api, user):
    for n in range(3):
        upload_text(user, f"file {n}")

    refused = api.get(LIST_URL, {"page_size": 101})
    largest = api.get(LIST_URL, {"page_size": 100})

    assert refused.status_code == 400
    assert error_of(refused)["code"] == "invalid_page_size"
    assert "at most 100" in error_of(refused)["message"]
    assert largest.status_code == 200
    assert len(largest.json()["results"]) == 3


def test_page_past_the_end_is_404(api, user):
    upload_text(user)

    response = api.get(LIST_URL, {"page": 2})

    assert response.status_code == 404
    assert error_of(response)["code"] == "page_not_found"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"page": "abc"}, "invalid_page"),
        ({"page": "0"}, "invalid_page"),
        ({"page": "-1"}, "invalid_page"),
        ({"page": "1.5"}, "invalid_page"),
        ({"page_size": "0"}, "invalid_page_size"),
        ({"page_size": "many"}, "invalid_page_size"),
        # past int()'s digit limit: must not be a 500
        ({"page": "9" * 5000}, "invalid_page"),
        ({"page_size": "9" * 5000}, "invalid_page_size"),
    ],
)
def test_malformed_page_parameters_are_400(api, query, code):
    response = api.get(LIST_URL, query)

    assert response.status_code == 400
    assert error_of(response)["code"] == code


# ------------------------------------------------------------------------------
# Creating
# ------------------------------------------------------------------------------
def test_post_creates_the_upload_and_answers_with_its_deliveries(api, user):
    response = api.post(LIST_URL, {"file": a_file(b"hello api", "greeting.txt")})

    assert response.status_code == 201
    body = response.json()
    upload = Upload.objects.get(pk=body["id"])
    assert upload.owner == user
    assert response["Location"] == detail_url(upload.pk)
    assert (body["name"], body["size"]) == ("greeting.txt", 9)
    assert body["content_type"].startswith("text/plain")
    assert body["deliveries"] == dict.fromkeys(upload_consumers(), "pending")
    event = Event.objects.get(type="file.uploaded", aggregate_id=str(upload.pk))
    assert event.actor == user.pk


def test_post_without_a_file_is_400(api):
    response = api.post(LIST_URL, {"other": "value"})

    assert response.status_code == 400
    assert error_of(response)["code"] == "missing"


def test_post_with_an_empty_file_is_400(api):
    response = api.post(LIST_URL, {"file": a_file(b"", "empty.txt")})

    assert response.status_code == 400
    assert error_of(response)["code"] == "empty"
    assert not Upload.objects.exists()


def test_post_with_two_files_is_400(api):
    response = api.post(LIST_URL, {"file": [a_file(b"a", "a.txt"), a_file(b"b", "b.txt")]})

    assert response.status_code == 400
    assert error_of(response)["code"] == "too_many_files"
    assert not Upload.objects.exists()


def test_post_with_more_files_than_django_parses_is_json_400(api, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 3
    files = [a_file(b"x", f"{n}.txt") for n in range(5)]

    response = api.post(LIST_URL, {"file": files})

    assert response.status_code == 400
    assert error_of(response)["code"] == "too_many_files"
    assert not Upload.objects.exists()


def test_post_with_more_fields_than_django_parses_is_json_400(api, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 3
    fields = {f"f{n}": "v" for n in range(10)}

    response = api.post(LIST_URL, {**fields, "file": a_file()})

    assert response.status_code == 400
    assert error_of(response)["code"] == "bad_request"


@pytest.mark.parametrize(
    "content_type", ["multipart/form-data", "multipart/form-data; boundary=", "multipart/x; b=1"]
)
def test_malformed_multipart_body_is_json_400(api, content_type):
    response = api.post(LIST_URL, "garbage", content_type=content_type)

    assert response.status_code == 400
    assert error_of(response)["code"] in ("bad_request", "missing")


def test_form_body_over_djangos_memory_limit_is_json_413(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000

    response = api.post(
        LIST_URL, "x=" + "a" * 5000, content_type="application/x-www-form-urlencoded"
    )

    assert response.status_code == 413
    assert error_of(response)["code"] == "too_large"


def test_session_post_over_djangos_limits_is_json_not_html(session_client, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 1
    files = [a_file(b"x", f"{n}.txt") for n in range(3)]

    response = session_client.post(LIST_URL, {"file": files}, headers=with_csrf(session_client))

    assert response.status_code == 400
    assert error_of(response)["code"] == "too_many_files"


def test_post_over_the_size_limit_is_413(api, settings):
    settings.UPLOAD_MAX_BYTES = 1024

    response = api.post(LIST_URL, {"file": a_file(b"x" * 4096, "big.txt")})

    assert response.status_code == 413
    assert error_of(response)["code"] == "too_large"
    assert not Upload.objects.exists()


def test_post_of_a_type_not_allowed_is_415(api, settings):
    settings.UPLOAD_ALLOWED_TYPES = ["text/plain"]
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64

    response = api.post(LIST_URL, {"file": a_file(png, "picture.png")})

    assert response.status_code == 415
    assert error_of(response)["code"] == "type_not_allowed"
    assert not Upload.objects.exists()


# ------------------------------------------------------------------------------
# One upload: read, download, delete
# ------------------------------------------------------------------------------
def test_get_shows_one_upload(api, user):
    upload = upload_text(user, "hello", name="hello.txt")

    response = api.get(detail_url(upload.pk))

    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["name"], body["size"]) == (upload.pk, "hello.txt", 5)
    assert set(body["deliveries"]) == set(upload_consumers())


def test_a_delivery_an_attempt_is_running_shows_as_pending(api, user):
    # ``running`` is the engine's state while an attempt holds its lease; the API keeps
    # the public states, in which it is not done yet.
    upload = upload_text(user)
    Delivery.objects.filter(event__aggregate_id=str(upload.pk)).update(state="running")

    body = api.get(detail_url(upload.pk)).json()

    assert body["deliveries"] == dict.fromkeys(upload_consumers(), "pending")


def test_download_is_the_file_as_an_attachment(api, user):
    upload = upload_text(user, "file body", name="notes.txt")

    response = api.get(download_url(upload.pk))

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"file body"
    assert response["Content-Disposition"].startswith("attachment")
    assert response["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("method", "url"),
    [("get", detail_url), ("delete", detail_url), ("get", download_url)],
)
def test_another_users_upload_is_404(api, other_user, method, url):
    upload = upload_text(other_user)

    response = getattr(api, method)(url(upload.pk))

    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"
    assert Upload.objects.filter(pk=upload.pk).exists()


@pytest.mark.parametrize("url", [detail_url(999999), download_url(999999), "/api/nothing/"])
def test_unknown_ids_and_paths_are_json_404(api, url):
    response = api.get(url)

    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_delete_removes_the_upload_and_publishes_file_deleted(api, user):
    upload = upload_text(user)

    response = api.delete(detail_url(upload.pk))

    assert response.status_code == 204
    assert response.content == b""
    assert not Upload.objects.filter(pk=upload.pk).exists()
    event = Event.objects.get(type="file.deleted", aggregate_id=str(upload.pk))
    assert event.actor == user.pk
    assert event.deliveries.count() == len(deletion_consumers())


@pytest.mark.parametrize(
    ("method", "url", "allow"),
    [
        ("put", LIST_URL, "GET, POST"),
        ("delete", LIST_URL, "GET, POST"),
        ("post", detail_url(1), "GET, DELETE"),
        ("patch", detail_url(1), "GET, DELETE"),
        ("delete", download_url(1), "GET"),
    ],
)
def test_wrong_method_is_405_json_with_allow(api, method, url, allow):
    response = getattr(api, method)(url)

    assert response.status_code == 405
    assert response["Allow"] == allow
    assert error_of(response)["code"] == "method_not_allowed"


# ------------------------------------------------------------------------------
# create_api_token command
# ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_create_api_token_prints_one_line_that_works_and_stores_only_its_hash(
    user, client, run_manage
):
    result = run_manage("create_api_token", "alice")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    raw = lines[0]
    assert raw == raw.strip() and raw.startswith("upl_")
    token = ApiToken.objects.get(user=user)
    assert token.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in json.dumps(list(ApiToken.objects.values()), default=str)
    assert client.get(LIST_URL, headers=bearer(raw)).status_code == 200


def test_create_api_token_for_an_unknown_user_fails_clearly(run_manage):
    result = run_manage("create_api_token", "nobody")

    assert result.returncode != 0
    assert "unknown user 'nobody'" in result.stderr
    assert result.stdout == ""


def test_create_api_token_takes_a_name(user):
    out = io.StringIO()

    call_command("create_api_token", "alice", "--name", "backup script", stdout=out)

    assert ApiToken.objects.get(user=user).name == "backup script"
    assert user_for_token(out.getvalue().strip()) == user


def test_create_api_token_refuses_an_inactive_user(user):
    user.is_active = False
    user.save()

    with pytest.raises(CommandError, match="inactive"):
        call_command("create_api_token", "alice", stdout=io.StringIO())
    assert not ApiToken.objects.exists()


# ------------------------------------------------------------------------------
# Admin
# ------------------------------------------------------------------------------
@pytest.fixture
def admin_client_(db: None) -> Client:
    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(admin)
    return client


def test_admin_shows_a_new_token_once_and_stores_its_hash(admin_client_, user):
    response = admin_client_.post(
        reverse("admin:uploads_apitoken_add"), {"user": user.pk, "name": "ci"}
    )

    assert response.status_code == 200
    token = ApiToken.objects.get(user=user, name="ci")
    raw = re.search(r"upl_[A-Za-z0-9_-]+", response.content.decode()).group()
    assert token.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert user_for_token(raw) == user

    # and never again: neither the list nor the change page holds the key or its hash
    listing = admin_client_.get(reverse("admin:uploads_apitoken_changelist")).content.decode()
    change = admin_client_.get(
        reverse("admin:uploads_apitoken_change", args=[token.pk])
    ).content.decode()
    assert token.key_prefix in listing
    for page in (listing, change):
        assert raw not in page
        assert token.key_hash not in page


def test_admin_revoke_action_stops_the_token(admin_client_, user, raw_token):
    token = ApiToken.objects.get(user=user)

    admin_client_.post(
        reverse("admin:uploads_apitoken_changelist"),
        {"action": "revoke_tokens", "_selected_action": [token.pk]},
    )

    token.refresh_from_db()
    assert token.revoked_at is not None
    assert user_for_token(raw_token) is None


# ------------------------------------------------------------------------------
# With a real worker
# ------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_posted_upload_is_seen_done_by_every_consumer_through_get(live_worker, user):
    _token, raw = create_api_token(user)
    api = Client(headers=bearer(raw))

    created = api.post(LIST_URL, {"file": a_file(b"through the api", "api.txt")})
    assert created.status_code == 201
    upload_id = created.json()["id"]

    def all_done() -> dict[str, str] | None:
        deliveries = api.get(detail_url(upload_id)).json()["deliveries"]
        return deliveries if set(deliveries.values()) == {"done"} else None

    assert wait_for(all_done, what="every delivery done through the API") == dict.fromkeys(
        upload_consumers(), "done"
    )
