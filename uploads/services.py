"""Creating and deleting uploads. Every path (web, API, admin, command) comes here."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Count, Min, Sum
from django.utils import timezone

from events import PermanentError
from events.outbox import record_event
from uploads.events import FILE_DELETED, FILE_UPLOADED
from uploads.exceptions import UploadGone, UploadLimitExceeded, UploadRejected
from uploads.files import SNIFF_BYTES, clean_filename, sniff_content_type
from uploads.models import Upload

logger = logging.getLogger(__name__)


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


RATE_WINDOW = dt.timedelta(minutes=1)


def check_upload_limits(owner: AbstractBaseUser, size: int) -> None:
    """Raise ``UploadLimitExceeded`` if ``owner`` is over their rate or quota with ``size``.

    Counted from the owner's uploads in the database, so every web host shares the
    counts. ``UPLOAD_RATE_PER_MINUTE``: uploads in the last minute (``rate_limited``,
    with the seconds until the oldest of them leaves the window). ``UPLOAD_QUOTA_BYTES``:
    bytes stored, this file included (``quota_exceeded``). 0 turns a limit off. Staff
    are held to both unless ``UPLOAD_LIMITS_EXEMPT_STAFF``.
    """
    if settings.UPLOAD_LIMITS_EXEMPT_STAFF and getattr(owner, "is_staff", False):
        return
    uploads = Upload.objects.filter(owner_id=owner.pk)
    rate = settings.UPLOAD_RATE_PER_MINUTE
    if rate > 0:
        window_start = timezone.now() - RATE_WINDOW
        recent = uploads.filter(created_at__gt=window_start).aggregate(
            count=Count("pk"), oldest=Min("created_at")
        )
        if recent["count"] >= rate:
            frees_at = recent["oldest"] + RATE_WINDOW
            retry_after = max(1, math.ceil((frees_at - timezone.now()).total_seconds()))
            raise UploadLimitExceeded(
                "rate_limited",
                f"at most {rate} uploads per minute; try again in {retry_after} s",
                retry_after=retry_after,
            )
    quota = settings.UPLOAD_QUOTA_BYTES
    if quota > 0:
        stored = uploads.aggregate(total=Sum("size"))["total"] or 0
        if stored + size > quota:
            raise UploadLimitExceeded(
                "quota_exceeded",
                f"this file ({size} bytes) would take your uploads to {stored + size} bytes, "
                f"over your quota of {quota} bytes; delete some files first",
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
    does not allow; ``UploadLimitExceeded`` when the owner is over a per-user limit
    (``check_upload_limits``, checked under a lock on the owner's row, so two requests
    of one user, on any hosts, cannot both take the last place). ``name`` (else the file's own name) goes through ``clean_filename``.

    The row, the event and its deliveries commit in one transaction; the stored file
    is removed again if, and only if, that transaction did not commit, whatever is
    raised (a ``SystemExit`` after the commit keeps it). That transaction is durable (the
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
            # Serialize one owner's uploads (PostgreSQL row lock; SQLite's IMMEDIATE
            # transactions already serialize writers) so the limits see every upload.
            list(get_user_model().objects.select_for_update().filter(pk=owner.pk).values_list("pk"))
            check_upload_limits(owner, upload.size)
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
        # Whatever is raised (gunicorn aborts a worker with SystemExit, which Django's
        # robust on-commit lets through), the file goes only with a transaction that
        # did not commit: a committed row must keep its bytes.
        if upload.file.name and not _upload_row_exists(upload.pk):
            default_storage.delete(upload.file.name)
        raise
    return upload


def _upload_row_exists(upload_id: int | None) -> bool:
    """Whether the upload row is in the database; ``True`` when that cannot be told.

    The database, not the exception, says whether the transaction committed: an
    on-commit callback may raise after the commit, and a failure inside COMMIT itself
    leaves the outcome unknown (then an orphan file beats a row whose file is gone).
    """
    if upload_id is None:
        return False
    try:
        return Upload.objects.filter(pk=upload_id).exists()
    except Exception:
        logger.warning("could not tell whether upload %s committed; keeping its file", upload_id)
        return True


def delete_upload(
    upload: Upload, *, actor: AbstractBaseUser | None, correlation_id: str = ""
) -> None:
    """Delete ``upload`` and publish ``file.deleted``; the storage consumer removes the
    stored file after commit (``delete_stored_file``), retrying until it can.

    Raises ``UploadGone``, recording nothing, when the upload was deleted already (a
    double click, an API retry, two admins, a stale object): the row is re-read under a
    lock first, so of two deletes of one upload exactly one records ``file.deleted``.
    """
    with transaction.atomic():
        # PostgreSQL: the second delete waits on the row lock, then finds no row. SQLite:
        # the IMMEDIATE transaction already serializes writers, and the re-read sees it.
        current = Upload.objects.select_for_update().filter(pk=upload.pk).first()
        if current is None:
            raise UploadGone(upload.pk)
        record_event(
            event_type=FILE_DELETED,
            aggregate_id=current.pk,
            actor=actor.pk if actor is not None else None,
            correlation_id=correlation_id,
            payload={
                "upload_id": current.pk,
                "owner_id": current.owner_id,
                "name": current.original_name,
                "storage_name": current.file.name,
            },
        )
        upload.delete()


def delete_stored_file(storage_name: str) -> None:
    """Remove a deleted upload's stored file from default storage; done if already gone.

    Raises whatever the store raises (``OSError``, botocore errors), so the storage
    consumer's delivery retries; a name outside the storage is a ``PermanentError``.
    "" (a ``file.deleted`` from before the storage consumer) has nothing to remove.
    """
    if not storage_name:
        return
    try:
        default_storage.delete(storage_name)
    except SuspiciousFileOperation as exc:
        raise PermanentError(f"storage name {storage_name!r} rejected: {exc}") from exc
