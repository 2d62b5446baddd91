"""A client that goes away in the middle of a request body: one warning line, no 500.

The WSGI server raises ``OSError`` on the short read (gunicorn's ``NoMoreData`` is one);
Django turns it into ``UnreadablePostError`` when a view reads ``request.FILES``.
"""

from __future__ import annotations

import io
import logging

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart

from uploads.models import Upload
from uploads.tokens import create_api_token

pytestmark = pytest.mark.django_db


class DisconnectingInput(io.RawIOBase):
    """A ``wsgi.input`` that gives the first ``cut`` bytes, then fails like a reset socket."""

    def __init__(self, body: bytes, cut: int) -> None:
        self._data = io.BytesIO(body[:cut])

    def read(self, size: int = -1) -> bytes:
        chunk = self._data.read(size if size and size > 0 else -1)
        if chunk:
            return chunk
        raise OSError("client disconnected (test)")

    def readline(self, size: int = -1) -> bytes:
        line = self._data.readline(size)
        if line:
            return line
        raise OSError("client disconnected (test)")


def multipart_body() -> bytes:
    data = SimpleUploadedFile("big.txt", b"x" * 200_000, content_type="text/plain")
    return encode_multipart(BOUNDARY, {"file": data})


def post_cut_short(client: Client, path: str, **headers: str):
    body = multipart_body()
    return client.generic(
        "POST",
        path,
        body,
        content_type=MULTIPART_CONTENT,
        **{"wsgi.input": DisconnectingInput(body, cut=len(body) // 2)},
        **headers,
    )


def assert_one_warning_line(caplog: pytest.LogCaptureFixture) -> None:
    serious = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelname for r in serious] == ["WARNING"], [r.getMessage() for r in serious]
    assert serious[0].exc_info is None
    assert "disconnected" in serious[0].getMessage()
    assert "\n" not in serious[0].getMessage()


def test_api_upload_cut_short_is_a_warning_not_a_500(user, caplog):
    _token, raw = create_api_token(user)
    client = Client(raise_request_exception=False)
    caplog.clear()

    with caplog.at_level(logging.INFO):
        response = post_cut_short(client, "/api/uploads/", HTTP_AUTHORIZATION=f"Bearer {raw}")

    assert response.status_code == 400
    assert_one_warning_line(caplog)
    assert not Upload.objects.exists()


def test_page_upload_cut_short_is_a_warning_not_a_500(user, caplog):
    client = Client(enforce_csrf_checks=True, raise_request_exception=False)
    client.force_login(user)
    client.get("/uploads/new/")
    token = client.cookies["csrftoken"].value
    caplog.clear()

    with caplog.at_level(logging.INFO):
        response = post_cut_short(client, "/uploads/new/", HTTP_X_CSRFTOKEN=token)

    assert response.status_code == 400
    assert_one_warning_line(caplog)
    assert not Upload.objects.exists()


def test_an_urlencoded_body_still_reads_whole(user):
    # Django closes the body stream after reading a non-multipart body (request.body),
    # which the browser's sign-in form is; the middleware's stream wrapper must allow it.
    client = Client()

    response = client.post(
        "/accounts/login/",
        f"username={user.username}&password=correct+horse+battery",
        content_type="application/x-www-form-urlencoded",
    )

    assert response.status_code == 302


def test_an_urlencoded_body_cut_short_is_a_warning_not_a_500(user, caplog):
    body = b"username=alice&password=" + b"x" * 10_000
    client = Client(raise_request_exception=False)
    caplog.clear()

    with caplog.at_level(logging.INFO):
        response = client.generic(
            "POST",
            "/accounts/login/",
            body,
            content_type="application/x-www-form-urlencoded",
            **{"wsgi.input": DisconnectingInput(body, cut=100)},
        )

    # The view saw the short body as a (failed) sign-in, which axes logs on its own;
    # the disconnect itself is one line, and nothing is an error.
    assert response.status_code == 400
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    lines = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelname == "WARNING"
