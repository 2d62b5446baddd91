"""Creating and deleting uploads. Every path (web, API, admin, command) comes here."""

from __future__ import annotations

import codecs
import hashlib
import logging
import re
import unicodedata
from pathlib import PurePosixPath

import charset_normalizer
import puremagic
from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction

from events.outbox import record_event
from uploads.events import FILE_DELETED, FILE_UPLOADED
from uploads.exceptions import UploadRejected
from uploads.models import Upload

logger = logging.getLogger(__name__)

# Bytes, not characters: most file systems cap a name at 255 bytes, and the name is
# offered to the user's file system on download.
MAX_NAME_BYTES = 255
# Control characters (Cc), invisible format characters such as the right-to-left
# override that makes "txt.exe" look like "exe.txt" (Cf), surrogates (Cs), private use
# (Co), and line/paragraph separators (Zl, Zp).
_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
# Characters Windows refuses in names: replaced, so a download saves under the same name
# everywhere. Path separators never get here (only the last component is kept).
_WINDOWS_FORBIDDEN = re.compile(r'[<>:"|?*]')
# Windows device names, with or without an extension ("con.txt" opens the console too).
# The superscript digits are device names to Windows as well.
_RESERVED_STEMS = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{port}{digit}" for port in ("COM", "LPT") for digit in "123456789\u00b9\u00b2\u00b3"}
)


def clean_filename(name: str) -> str:
    """A harmless display name for an uploaded file's original ``name``.

    Keeps only the last path component (``/`` or ``\\``), drops control and invisible
    format characters (NUL, bidi overrides), replaces characters Windows forbids,
    strips leading and trailing dots and spaces (so ``..`` is gone), prefixes Windows
    device names (``CON``, ``NUL.txt``, ``com1.tar.gz`` ...) with ``_`` and cuts the
    name to 255 UTF-8 bytes, keeping a short extension. Returns ``"unnamed"`` when
    nothing is left. The name is metadata only: files are stored under random names.
    """
    name = unicodedata.normalize("NFC", name or "")
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch) not in _DROPPED_CATEGORIES)
    name = _WINDOWS_FORBIDDEN.sub("_", name)
    name = name.strip(" .")
    if name.split(".", 1)[0].rstrip(" ").upper() in _RESERVED_STEMS:
        name = "_" + name
    name = _truncate_utf8(name, MAX_NAME_BYTES).strip(" ")
    return name or "unnamed"


def _truncate_utf8(name: str, limit: int) -> str:
    """``name`` cut to ``limit`` UTF-8 bytes, keeping an extension of up to 16 characters."""
    if len(name.encode()) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext) > 16:
        stem, ext = name, ""
    suffix = "." + ext if ext else ""
    budget = limit - len(suffix.encode())
    # Cutting the encoded bytes may split a character: drop the broken tail.
    stem = stem.encode()[:budget].decode(errors="ignore").rstrip(" .")
    return stem + suffix


# ------------------------------------------------------------------------------
# Content type, from the bytes
# ------------------------------------------------------------------------------
SNIFF_BYTES = 8192
OCTET_STREAM = "application/octet-stream"
# Text formats told apart only by their extension, and only once the bytes are text.
TEXT_TYPES_BY_EXTENSION = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".log": "text/plain",
    ".csv": "text/csv",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".json": "application/json",
}
# Text whose extension names an active type keeps that type, so it is never served as
# something a browser would render.
_ACTIVE_TEXT_EXTENSIONS = {
    ".html": "text/html",
    ".htm": "text/html",
    ".xhtml": "application/xhtml+xml",
    ".svg": "image/svg+xml",
    ".xml": "application/xml",
}
# Types puremagic reports from textual patterns rather than binary magic numbers.
_TEXTUAL_MAGIC_TYPES = frozenset({"application/xml", "application/json", "application/javascript"})
# WHATWG MIME Sniffing, "identifying a resource with an unknown MIME type": what makes a
# browser render bytes as HTML, whatever their name says.
_HTML_PREFIXES = (
    b"<!doctype html",
    b"<html",
    b"<head",
    b"<script",
    b"<iframe",
    b"<h1",
    b"<div",
    b"<font",
    b"<table",
    b"<a",
    b"<style",
    b"<title",
    b"<b",
    b"<body",
    b"<br",
    b"<p",
    b"<!--",
)
_BOMS = (
    codecs.BOM_UTF8,
    codecs.BOM_UTF32_LE,
    codecs.BOM_UTF32_BE,
    codecs.BOM_UTF16_LE,
    codecs.BOM_UTF16_BE,
)


def _markup_type(head: bytes) -> str | None:
    """``text/html`` or ``image/svg+xml`` when a browser would take ``head`` for markup."""
    text = head.removeprefix(codecs.BOM_UTF8).lstrip(b" \t\n\r\f").lower()
    for prefix in _HTML_PREFIXES:
        if text.startswith(prefix) and text[len(prefix) : len(prefix) + 1] in (b" ", b">"):
            return "text/html"
    if text.startswith((b"<svg", b"<?xml", b"<!doctype svg")) and b"<svg" in text:
        return "image/svg+xml"
    return None


def _is_text(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) reads as text in some encoding."""
    if head.startswith(_BOMS):
        return True
    if b"\0" in head:
        return False
    try:
        # The cut at SNIFF_BYTES may split a multi-byte character: allow 3 broken bytes.
        head.decode("utf-8") if len(head) < SNIFF_BYTES else head[:-3].decode("utf-8")
        return True
    except UnicodeDecodeError:
        return charset_normalizer.from_bytes(head).best() is not None


def sniff_content_type(head: bytes, name: str = "") -> str:
    """The content type of a file from its first bytes; ``name`` only breaks ties.

    Markup a browser would render (HTML, SVG) is recognised first, then binary formats
    by their magic numbers (``puremagic``). Text is ``text/plain``, or by extension
    ``text/csv``, ``text/markdown`` or ``application/json`` (and the HTML, SVG and XML
    types for those extensions); anything else is ``application/octet-stream``. The
    client's own ``Content-Type`` is never trusted.
    """
    markup = _markup_type(head)
    if markup:
        return markup
    extension = PurePosixPath(name.lower()).suffix
    if not head:
        return OCTET_STREAM
    try:
        matches = puremagic.magic_string(head, filename=name or None)
    except (puremagic.PureError, ValueError):
        matches = []
    typed = [match for match in matches if match.mime_type]
    best = max(typed, key=lambda match: match.confidence).mime_type if typed else None
    # A magic number at a fixed offset (PDF, PNG, ZIP ...) wins even when the first bytes
    # happen to be ASCII; textual matches are decided below, by the extension.
    if best and not best.startswith("text/") and best not in _TEXTUAL_MAGIC_TYPES:
        return best
    if _is_text(head):
        if extension in _ACTIVE_TEXT_EXTENSIONS:
            return _ACTIVE_TEXT_EXTENSIONS[extension]
        if best in {"application/xml", "text/xml"}:
            return "application/xml"
        return TEXT_TYPES_BY_EXTENSION.get(extension, "text/plain")
    # Binary bytes that only a textual pattern or the name matched: type unknown.
    return OCTET_STREAM


def check_allowed_type(content_type: str) -> None:
    """Raise ``UploadRejected("type_not_allowed")`` unless ``UPLOAD_ALLOWED_TYPES`` allows it.

    An empty list allows everything; ``image/*`` allows every image type.
    """
    allowed = [entry.strip().lower() for entry in settings.UPLOAD_ALLOWED_TYPES if entry.strip()]
    if not allowed:
        return
    content_type = content_type.lower()
    major = content_type.split("/", 1)[0]
    if content_type in allowed or f"{major}/*" in allowed:
        return
    raise UploadRejected(
        "type_not_allowed",
        f"files of type {content_type} are not accepted here (allowed: {', '.join(allowed)})",
    )


def check_upload_size(size: int | None) -> None:
    """Raise ``UploadRejected`` unless ``size`` is between 1 byte and ``UPLOAD_MAX_BYTES``."""
    if not size:
        raise UploadRejected("empty", "the file is empty")
    if size > settings.UPLOAD_MAX_BYTES:
        raise UploadRejected(
            "too_large",
            f"the file is {size} bytes, over the limit of {settings.UPLOAD_MAX_BYTES} bytes",
        )


def create_upload(
    *,
    owner: AbstractBaseUser,
    file: File,
    name: str | None = None,
    correlation_id: str = "",
) -> Upload:
    """Store ``file`` for ``owner`` and publish ``file.uploaded``, all or nothing.

    Refuses (``UploadRejected``) a missing, empty or too large file, and one whose type,
    sniffed from its first bytes (``sniff_content_type``), ``UPLOAD_ALLOWED_TYPES``
    does not allow. ``name`` (else the file's own name) goes through ``clean_filename``.

    The row, the event and its deliveries commit in one transaction; the stored file
    is removed again if that transaction fails. That transaction is durable (the
    outermost one): inside a caller's transaction a later rollback there would leave the
    stored file behind, so Django raises ``RuntimeError`` instead.
    """
    if file is None:
        raise UploadRejected("missing", "no file was given")
    check_upload_size(file.size)
    original_name = clean_filename(name or getattr(file, "name", "") or "")
    file.seek(0)
    content_type = sniff_content_type(file.read(SNIFF_BYTES), original_name)
    check_allowed_type(content_type)
    file.seek(0)
    digest = hashlib.sha256()
    for chunk in file.chunks():
        digest.update(chunk)
    file.seek(0)

    upload = Upload(
        owner=owner,
        original_name=original_name,
        size=file.size,
        content_type=content_type,
        sha256=digest.hexdigest(),
    )
    try:
        with transaction.atomic(durable=True):
            upload.file.save(original_name, file, save=False)
            upload.save()
            record_event(
                event_type=FILE_UPLOADED,
                aggregate_id=upload.pk,
                actor=owner.pk,
                correlation_id=correlation_id,
                payload={
                    "upload_id": upload.pk,
                    "owner_id": owner.pk,
                    "name": upload.original_name,
                    "size": upload.size,
                    "storage_name": upload.file.name,
                    "content_type": upload.content_type,
                    "sha256": upload.sha256,
                },
            )
    except BaseException:
        if upload.file.name:
            default_storage.delete(upload.file.name)
        raise
    return upload


def delete_upload(
    upload: Upload, *, actor: AbstractBaseUser | None, correlation_id: str = ""
) -> None:
    """Delete ``upload`` and publish ``file.deleted``; the stored file goes after commit."""
    storage_name = upload.file.name
    with transaction.atomic():
        record_event(
            event_type=FILE_DELETED,
            aggregate_id=upload.pk,
            actor=actor.pk if actor is not None else None,
            correlation_id=correlation_id,
            payload={
                "upload_id": upload.pk,
                "owner_id": upload.owner_id,
                "name": upload.original_name,
            },
        )
        upload.delete()
        transaction.on_commit(lambda: _delete_stored_file(storage_name))


def _delete_stored_file(storage_name: str) -> None:
    try:
        default_storage.delete(storage_name)
    except OSError:
        logger.warning("could not delete stored file %s", storage_name, exc_info=True)
