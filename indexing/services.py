"""Keeping the search index in step with uploads, under redelivery and disorder."""

from __future__ import annotations

from django.core.files.storage import default_storage

from indexing.models import IndexEntry

MAX_TEXT_CHARS = 1_000_000
TEXT_EXTENSIONS = (".txt", ".md", ".markdown", ".csv", ".json", ".log")


def extract_text(storage_name: str, name: str) -> tuple[str, str]:
    """Text of a stored file and a note on why there is none; at most ``MAX_TEXT_CHARS``."""
    if not name.lower().endswith(TEXT_EXTENSIONS):
        return "", "type not extracted; indexed by name"
    if not default_storage.exists(storage_name):
        return "", "stored file is gone; indexed by name"
    with default_storage.open(storage_name, "rb") as handle:
        raw = handle.read(MAX_TEXT_CHARS * 4)
    return raw.decode("utf-8", errors="replace")[:MAX_TEXT_CHARS], ""


def index_upload(
    *, upload_id: int, owner_id: int, name: str, storage_name: str
) -> IndexEntry | None:
    """Index (or re-index in place) one upload, unless it was deleted already."""
    entry = IndexEntry.objects.select_for_update().filter(upload_id=upload_id).first()
    if entry is not None and entry.deleted:
        # file.deleted was handled first (disorder): never bring the file back.
        return None
    text, note = extract_text(storage_name, name)
    entry, _ = IndexEntry.objects.update_or_create(
        upload_id=upload_id,
        defaults={"owner_id": owner_id, "name": name, "text": text, "note": note},
    )
    return entry


def remove_upload(*, upload_id: int, owner_id: int, name: str) -> None:
    """Drop an upload's text and leave a tombstone that blocks late re-indexing."""
    IndexEntry.objects.update_or_create(
        upload_id=upload_id,
        defaults={"owner_id": owner_id, "name": name, "text": "", "note": "", "deleted": True},
    )
