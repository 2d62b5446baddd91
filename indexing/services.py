"""Keeping the search index in step with uploads, under redelivery and disorder; searching it.

Indexing an upload is two steps (``events.registry.TwoStepHandler``):
``extract_upload_text`` reads and extracts outside the delivery's transaction, because
on SQLite that transaction holds the database's write lock; ``index_upload`` writes
the entry inside it. A deleted upload leaves a tombstone that is never removed, so a
``file.uploaded`` handled after its ``file.deleted`` cannot bring the file back.
"""

from __future__ import annotations

import logging

from django.core.exceptions import SuspiciousFileOperation
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models.functions import Left

from events import Forgotten, PermanentError
from indexing import search
from indexing.extraction import (
    Extraction,
    clean_name,
    extract,
    extract_in_child,
    kind_of,
    read_limit,
    read_stored_file,
)
from indexing.models import IndexEntry
from indexing.search import SearchHit
from uploads.events import FILE_DELETED

logger = logging.getLogger(__name__)

# tsvector values are limited to 1 MB. Ordinary text stays far below that even at
# MAX_TEXT_CHARS; text made mostly of distinct words does not, and then only this many
# characters of it are indexed on PostgreSQL (about 2 bytes of tsvector per character
# at worst).
POSTGRES_FALLBACK_CHARS = 300_000
# SQLSTATE of "string is too long for tsvector".
PROGRAM_LIMIT_EXCEEDED = "54000"

__all__ = [
    "Extraction",
    "SearchHit",
    "extract_upload_text",
    "index_upload",
    "is_tombstoned",
    "remove_upload",
    "search_uploads",
]


def is_tombstoned(*, upload_id: int) -> bool:
    """Whether ``file.deleted`` was handled for this upload already."""
    return IndexEntry.objects.filter(upload_id=upload_id, deleted=True).exists()


def extract_upload_text(
    *, upload_id: int, storage_name: str, name: str, content_type: str = ""
) -> Extraction | None:
    """The text of a stored upload, read with a bounded read; None if it was deleted.

    Slow and free of side effects: runs before the delivery's transaction, maybe more
    than once. Unreadable content (binary, malformed or encrypted PDF) and a file that
    is already gone give a name-only ``Extraction`` with the reason; an I/O error
    propagates so the delivery is retried.
    """
    if is_tombstoned(upload_id=upload_id):
        return None  # index_upload will skip it; do not read a file that is gone
    kind = kind_of(name=name, content_type=content_type)
    if kind is None:
        return Extraction.name_only(f"type {content_type or 'unknown'} is not extracted")
    try:
        data, truncated = read_stored_file(storage_name, limit=read_limit(kind))
    except FileNotFoundError:
        # Deleted in the meantime (file.deleted follows) or lost: the name is all we have.
        return Extraction.name_only("stored file not found")
    except SuspiciousFileOperation as exc:
        raise PermanentError(f"storage name {storage_name!r} rejected: {exc}") from exc
    if kind == "pdf":
        # pypdf on hostile input can take the worker's memory and hold a CPU for as long
        # as one page takes: a child process under kernel limits does it instead.
        return extract_in_child(data=data, kind=kind, truncated=truncated)
    # Text, HTML (libxml2) and JSON are linear in at most MAX_TEXT_BYTES of input, with
    # the cooperative budget checked as they go; they stay in the worker.
    return extract(data=data, kind=kind, truncated=truncated)


@transaction.atomic(savepoint=False)
def index_upload(
    *, upload_id: int, owner_id: int, name: str, extraction: Extraction | None
) -> IndexEntry | None:
    """Index one upload, or re-index it in place when the event is delivered again.

    Returns None, changing nothing, when the upload was deleted already. Runs inside the
    delivery's transaction; the entry is locked so a concurrent delete waits for it.
    """
    entry = IndexEntry.objects.select_for_update().filter(upload_id=upload_id).first()
    if entry is not None and entry.deleted:
        # file.deleted was handled first (disorder, late retries): never bring it back.
        return None
    if extraction is None:
        # extract_upload_text saw a tombstone, and tombstones are never removed; if one
        # was removed by hand, the upload is still deleted.
        return None
    fields = {
        "owner_id": owner_id,
        "name": clean_name(name),
        "text": extraction.text,
        "note": extraction.note,
    }
    if entry is None:
        try:
            # A savepoint only here: another delivery may insert the same upload at once.
            with transaction.atomic():
                entry = IndexEntry.objects.create(upload_id=upload_id, **fields)
        except IntegrityError:
            entry = IndexEntry.objects.select_for_update().get(upload_id=upload_id)
            if entry.deleted:
                return None
            entry = _update_entry(entry, fields)
    else:
        entry = _update_entry(entry, fields)
    if connection.vendor == "postgresql":
        _update_search_vector(entry)
    return entry


def _update_entry(entry: IndexEntry, fields: dict[str, object]) -> IndexEntry:
    for field, value in fields.items():
        setattr(entry, field, value)
    entry.save(update_fields=[*fields, "indexed_at"])
    return entry


@transaction.atomic
def remove_upload(*, upload_id: int, owner_id: int, name: str) -> IndexEntry:
    """Drop an upload's text and leave a tombstone that blocks late re-indexing."""
    entry, _ = IndexEntry.objects.update_or_create(
        upload_id=upload_id,
        defaults={
            "owner_id": owner_id,
            "name": clean_name(name),
            "text": "",
            "note": "",
            "deleted": True,
            "search_vector": None,
        },
    )
    return entry


def search_uploads(*, query: str, owner_id: int | None = None, limit: int = 20) -> list[SearchHit]:
    """Uploads matching ``query``, best first, each with a highlighted snippet.

    Uses FTS5 on SQLite and full-text search on PostgreSQL (``connection.vendor``);
    both accept web-search syntax (``"a phrase"``, ``or``, ``-word``) and never raise on
    user input. ``owner_id`` limits the hits to that user's uploads; deleted uploads
    never match.
    """
    return search.search(query=query, owner_id=owner_id, limit=limit)


def _update_search_vector(entry: IndexEntry) -> None:
    """Fill the PostgreSQL ``tsvector`` of ``entry``, falling back to a prefix if too big."""
    entries = IndexEntry.objects.filter(pk=entry.pk)
    try:
        with transaction.atomic():
            entries.update(search_vector=search.postgres_search_vector(name=entry.name))
    except OperationalError as exc:
        if getattr(exc.__cause__, "sqlstate", None) != PROGRAM_LIMIT_EXCEEDED:
            raise
        logger.info("upload %s: tsvector too large (%s); indexing a prefix", entry.upload_id, exc)
        note = f"only the first {POSTGRES_FALLBACK_CHARS} characters are searchable"
        entries.update(
            search_vector=search.postgres_search_vector(
                name=entry.name, text_expression=Left("text", POSTGRES_FALLBACK_CHARS)
            ),
            note="; ".join(filter(None, [entry.note, note]))[:255],
        )


def forget_tombstones(pruned: Forgotten) -> int:
    """Retention: drop the tombstones of deleted uploads whose every event is being pruned.

    A tombstone keeps a late ``file.uploaded`` from indexing a deleted upload again; once
    none of the upload's events is left, nothing can be delivered or replayed for it.
    """
    deleted = {
        int(envelope.aggregate_id)
        for envelope in pruned.events
        if envelope.type == FILE_DELETED and envelope.aggregate_id in pruned.aggregates_gone
    }
    if not deleted:
        return 0
    return IndexEntry.objects.filter(upload_id__in=deleted, deleted=True).delete()[0]
