"""Creating and deleting uploads. Every path (web, API, admin, command) comes here."""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import re
import unicodedata

from django.conf import settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction

from events.services import record_event
from uploads.events import FILE_DELETED, FILE_UPLOADED
from uploads.exceptions import UploadRejected
from uploads.models import Upload

logger = logging.getLogger(__name__)

MAX_NAME_LENGTH = 255
_UNSAFE_NAME_CHARS = re.compile(r"[\x00-\x1f\x7f/\\]")


def clean_filename(name: str) -> str:
    """The last path component of ``name``, without control characters, at most 255 chars."""
    name = unicodedata.normalize("NFC", name or "")
    name = re.split(r"[/\\]", name)[-1]
    name = _UNSAFE_NAME_CHARS.sub("", name).strip(" .")
    if len(name) > MAX_NAME_LENGTH:
        stem, dot, ext = name.rpartition(".")
        if dot and len(ext) <= 16:
            name = stem[: MAX_NAME_LENGTH - len(ext) - 1] + "." + ext
        else:
            name = name[:MAX_NAME_LENGTH]
    return name or "unnamed"


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

    The row, the event and its deliveries commit in one transaction; the stored file
    is removed again if that transaction fails. That transaction is durable (the
    outermost one): inside a caller's transaction a later rollback there would leave the
    stored file behind, so Django raises ``RuntimeError`` instead.
    """
    if file is None:
        raise UploadRejected("missing", "no file was given")
    check_upload_size(file.size)
    original_name = clean_filename(name or getattr(file, "name", "") or "")
    digest = hashlib.sha256()
    for chunk in file.chunks():
        digest.update(chunk)
    file.seek(0)
    content_type = mimetypes.guess_type(original_name)[0] or "application/octet-stream"

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
