"""Upload security: hostile names, the streaming size limit, sniffed types, inert downloads.

Bodies are built by hand where the test client would tidy them (it keeps only the
basename of a file name), so the server sees exactly what a hostile client sends.
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.core.handlers.wsgi import LimitedStream
from django.test import Client, RequestFactory

from uploads.exceptions import UploadRejected
from uploads.files import clean_filename, sniff_content_type
from uploads.intake import files_from_request
from uploads.models import Upload

pytestmark = pytest.mark.django_db

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 32
HTML = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"


def multipart(
    filename: str, content: bytes, *, csrf: str | None = None, content_type: str = "text/plain"
) -> tuple[bytes, str]:
    """A multipart body with one ``file`` part named exactly ``filename`` (UTF-8)."""
    boundary = uuid.uuid4().hex
    parts = []
    if csrf is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="csrfmiddlewaretoken"'
            f"\r\n\r\n{csrf}\r\n".encode()
        )
    quoted = filename.replace("\\", "\\\\").replace('"', '\\"')
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{quoted}"'
        f"\r\nContent-Type: {content_type}\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post_raw(client: Client, filename: str, content: bytes, **extra: Any) -> Any:
    body, content_type = multipart(filename, content)
    return client.generic("POST", "/uploads/new/", body, content_type=content_type, **extra)


# ------------------------------------------------------------------------------
# Hostile file names
# ------------------------------------------------------------------------------
HOSTILE_NAMES = [
    # (what a client sends, what is stored and shown)
    ("../../etc/passwd", "passwd"),
    ("..\\..\\windows\\system32\\drivers\\etc\\hosts", "hosts"),
    ("C:\\Users\\me\\report.pdf", "report.pdf"),
    ("/absolute/path.txt", "path.txt"),
    ("a\x00b.txt", "ab.txt"),
    ("bell\x07\x1b[31mred.txt", "bell[31mred.txt"),
    ("invoice\u202egpj.exe", "invoicegpj.exe"),
    ("zero\u200bwidth.txt", "zerowidth.txt"),
    ("CON", "_CON"),
    ("con.txt", "_con.txt"),
    ("PRN.log", "_PRN.log"),
    ("aux", "_aux"),
    ("NUL.tar.gz", "_NUL.tar.gz"),
    ("COM1", "_COM1"),
    ("com9.txt", "_com9.txt"),
    ("LPT1.doc", "_LPT1.doc"),
    ("lpt9", "_lpt9"),
    ("COM0.txt", "COM0.txt"),
    ("console.txt", "console.txt"),
    ('what?<is>:"this"|*.txt', "what__is___this___.txt"),
    ("  .hidden.txt. . ", "hidden.txt"),
    ("<script>alert(1)</script>.html", "script_.html"),
    ("x" * 300 + ".txt", "x" * 251 + ".txt"),
    ("é" * 200 + ".pdf", "é" * 125 + ".pdf"),
    ("y" * 400, "y" * 255),
]
# Names no multipart header can carry raw, but a command or an API client might pass.
DIRECT_ONLY_NAMES = [("line\r\nbreak.txt", "linebreak.txt"), ("tab\there.txt", "tabhere.txt")]
# Names a hostile client may send that leave nothing usable.
EMPTY_NAMES = ["..", "...", " . ", "\x00\x01", "/", "../", "\u202e"]


@pytest.mark.parametrize(
    ("name", "expected"), HOSTILE_NAMES + DIRECT_ONLY_NAMES, ids=lambda v: repr(v[:24])
)
def test_clean_filename_neutralizes_hostile_names(name, expected):
    cleaned = clean_filename(name)

    assert cleaned == expected
    assert len(cleaned.encode()) <= 255
    assert "/" not in cleaned and "\\" not in cleaned and "\x00" not in cleaned


@pytest.mark.parametrize("name", EMPTY_NAMES, ids=repr)
def test_clean_filename_of_nothing_usable_is_unnamed(name):
    assert clean_filename(name) == "unnamed"


@pytest.mark.parametrize(("name", "expected"), HOSTILE_NAMES, ids=lambda v: repr(v[:24]))
def test_hostile_names_through_the_form_are_stored_neutralized_and_shown_escaped(
    signed_in, user, name, expected
):
    response = post_raw(signed_in, name, b"harmless text", HTTP_ACCEPT="application/json")

    assert response.status_code == 201, response.content
    upload = Upload.objects.get(owner=user)
    assert upload.original_name == expected
    assert Path(upload.file.name).name.isalnum()  # the stored name is random hex
    page = signed_in.get(f"/uploads/{upload.pk}/").content.decode()
    assert "<script>alert" not in page
    download = signed_in.get(f"/uploads/{upload.pk}/download/")
    disposition = download["Content-Disposition"]
    assert disposition.startswith('attachment; filename="')
    assert "filename*=UTF-8''" in disposition
    assert all(ord(ch) < 128 and ch not in "\r\n\x00" for ch in disposition)


def test_download_header_carries_the_exact_name_in_filename_star(signed_in, user):
    response = post_raw(signed_in, "Résumé «final» 2026.pdf", PDF, HTTP_ACCEPT="application/json")
    upload = Upload.objects.get(pk=response.json()["id"])

    disposition = signed_in.get(f"/uploads/{upload.pk}/download/")["Content-Disposition"]

    assert disposition == (
        'attachment; filename="Resume final 2026.pdf"; '
        "filename*=UTF-8''R%C3%A9sum%C3%A9%20%C2%ABfinal%C2%BB%202026.pdf"
    )


# ------------------------------------------------------------------------------
# The size limit, enforced while the body streams in
# ------------------------------------------------------------------------------
class CountingReader(io.RawIOBase):
    """A request body that counts how many of its bytes the server read."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self._data.read(size)
        self.bytes_read += len(chunk)
        return chunk

    def readline(self, size: int = -1) -> bytes:
        line = self._data.readline(size)
        self.bytes_read += len(line)
        return line


class RecordingHandler(FileUploadHandler):
    """Installed after the limit: records what would have reached memory or disk."""

    received: list[int] = []

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        RecordingHandler.received.append(0)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        RecordingHandler.received[-1] += len(raw_data)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


@pytest.fixture
def small_limit(settings):
    settings.UPLOAD_MAX_BYTES = 100_000
    settings.UPLOAD_MAX_REQUEST_BYTES = 1_000_000
    settings.FILE_UPLOAD_HANDLERS = [
        "uploads.intake.LimitedUploadHandler",
        "tests.test_upload_security.RecordingHandler",
        "django.core.files.uploadhandler.MemoryFileUploadHandler",
        "django.core.files.uploadhandler.TemporaryFileUploadHandler",
    ]
    RecordingHandler.received = []
    return settings


def _streamed_request(body: bytes, content_type: str, content_length: int | None = None):
    request = RequestFactory().post("/uploads/new/", body, content_type=content_type)
    reader = CountingReader(body)
    length = len(body) if content_length is None else content_length
    request.META["CONTENT_LENGTH"] = str(length)
    request._stream = LimitedStream(reader, length)
    return request, reader


def test_handler_stops_reading_once_a_file_passes_the_limit(small_limit):
    # Under the request limit, so only the per-file count can stop it.
    body, content_type = multipart("big.bin", b"\x01" * 900_000)
    request, reader = _streamed_request(body, content_type)

    with pytest.raises(UploadRejected) as refused:
        files_from_request(request)

    assert refused.value.code == "too_large"
    assert request.upload_too_large is True
    # Nothing past the limit reached the handlers that keep data in memory or on disk...
    assert RecordingHandler.received and max(RecordingHandler.received) <= 100_000
    # ...and the body was not read to its end: a chunk or two past the limit at most.
    assert reader.bytes_read < 100_000 + 4 * 65_536 < len(body)


def test_body_far_above_the_limit_is_refused_before_any_file_byte(small_limit):
    body, content_type = multipart("huge.bin", b"\x01" * 3_000_000)
    request, reader = _streamed_request(body, content_type)

    with pytest.raises(UploadRejected) as refused:
        files_from_request(request)

    assert refused.value.code == "too_large"
    assert RecordingHandler.received == []  # not even the file's start was passed on
    assert reader.bytes_read <= 2 * 65_536


def test_a_file_at_the_limit_is_accepted(small_limit, signed_in, user):
    response = signed_in.post(
        "/uploads/new/",
        {"file": SimpleUploadedFile("exact.bin", b"\x01" * 100_000)},
        headers={"Accept": "application/json"},
    )

    assert response.status_code == 201
    assert Upload.objects.get(owner=user).size == 100_000


def test_too_large_upload_is_413_with_a_message(small_limit, signed_in):
    big = SimpleUploadedFile("big.bin", b"\x01" * 100_001)

    plain = signed_in.post("/uploads/new/", {"file": big})
    big.seek(0)
    scripted = signed_in.post(
        "/uploads/new/", {"file": big}, headers={"Accept": "application/json"}
    )

    assert plain.status_code == 413
    assert "at most 100000 bytes" in plain.content.decode()
    assert scripted.status_code == 413
    assert scripted.json()["error"]["code"] == "too_large"
    assert not Upload.objects.exists()


def test_csrf_check_still_works_when_the_limit_stops_the_upload(small_limit, user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    token = client.get("/uploads/new/").cookies["csrftoken"].value

    with_token, content_type = multipart("big.bin", b"\x01" * 200_000, csrf=token)
    without_token, content_type2 = multipart("big.bin", b"\x01" * 200_000)

    refused = client.generic("POST", "/uploads/new/", with_token, content_type=content_type)
    forged = client.generic("POST", "/uploads/new/", without_token, content_type=content_type2)

    assert refused.status_code == 413
    assert forged.status_code == 403
    assert not Upload.objects.exists()


# ------------------------------------------------------------------------------
# Content types come from the bytes
# ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        (HTML, "notes.txt", "text/html"),
        (b"\n  <html><body>hi</body></html>", "page.md", "text/html"),
        (b"\xef\xbb\xbf<script>alert(1)</script>", "data.csv", "text/html"),
        (SVG, "picture.png", "image/svg+xml"),
        (
            b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>',
            "x.txt",
            "image/svg+xml",
        ),
        (PNG, "notes.txt", "image/png"),
        (PDF, "notes.txt", "application/pdf"),
        (b"plain words", "notes.txt", "text/plain"),
        (b"plain words", "no-extension", "text/plain"),
        (b"plain words", "program.exe", "text/plain"),
        (b"a,b\n1,2\n", "table.csv", "text/csv"),
        ("café;1\n".encode("latin-1"), "latin.csv", "text/csv"),
        (b"# Title\n", "readme.md", "text/markdown"),
        (b'{"a": 1}', "data.json", "application/json"),
        (b"\x00\x01\x02\x03binary", "data.json", "application/octet-stream"),
        (b"hello <b>bold</b> after text", "page.html", "text/html"),
    ],
)
def test_content_type_is_sniffed_from_the_bytes(content, name, expected):
    assert sniff_content_type(content, name) == expected


def test_client_content_type_is_ignored(signed_in, user):
    body, content_type = multipart("notes.txt", HTML, content_type="text/plain")

    signed_in.generic("POST", "/uploads/new/", body, content_type=content_type)

    assert Upload.objects.get(owner=user).content_type == "text/html"


@pytest.mark.parametrize(
    ("content", "name"), [(HTML, "notes.txt"), (SVG, "picture.png"), (PDF, "doc.pdf")]
)
def test_active_files_download_as_inert_attachments(signed_in, user, content, name):
    response = post_raw(signed_in, name, content, HTTP_ACCEPT="application/json")
    upload_id = response.json()["id"]

    download = signed_in.get(f"/uploads/{upload_id}/download/")

    assert download.status_code == 200
    assert download["Content-Type"] == "application/octet-stream"
    assert download["Content-Disposition"].startswith("attachment;")
    assert download["X-Content-Type-Options"] == "nosniff"
    assert download["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert b"".join(download.streaming_content) == content


def test_harmless_types_download_with_their_own_type(signed_in, user):
    response = post_raw(signed_in, "photo.png", PNG, HTTP_ACCEPT="application/json")

    download = signed_in.get(f"/uploads/{response.json()['id']}/download/")

    assert download["Content-Type"] == "image/png"
    assert download["Content-Security-Policy"] == "default-src 'none'; sandbox"


# ------------------------------------------------------------------------------
# The allow-list
# ------------------------------------------------------------------------------
@pytest.fixture
def images_only(settings):
    settings.UPLOAD_ALLOWED_TYPES = ["image/*", "application/pdf"]
    return settings


def test_type_outside_the_allow_list_is_415(images_only, signed_in):
    plain = signed_in.post("/uploads/new/", {"file": SimpleUploadedFile("a.txt", b"words")})
    scripted = signed_in.post(
        "/uploads/new/",
        {"file": SimpleUploadedFile("fake.png", HTML)},
        headers={"Accept": "application/json"},
    )

    assert plain.status_code == 415
    assert "“a.txt” was refused: files of type text/plain are not accepted" in (
        plain.content.decode()
    )
    assert scripted.status_code == 415
    assert scripted.json()["error"]["code"] == "type_not_allowed"
    assert not Upload.objects.exists()


def test_types_on_the_allow_list_pass(images_only, signed_in, user):
    for name, content in [("p.png", PNG), ("d.pdf", PDF)]:
        response = signed_in.post(
            "/uploads/new/",
            {"file": SimpleUploadedFile(name, content)},
            headers={"Accept": "application/json"},
        )
        assert response.status_code == 201

    assert Upload.objects.filter(owner=user).count() == 2


def test_empty_allow_list_allows_every_type(settings, signed_in):
    settings.UPLOAD_ALLOWED_TYPES = []

    response = signed_in.post(
        "/uploads/new/",
        {"file": SimpleUploadedFile("x.bin", b"\x00\x01")},
        headers={"Accept": "application/json"},
    )

    assert response.status_code == 201
