"""The events ``uploads`` publishes: the only part of this app consumers may import."""

from __future__ import annotations

import mimetypes

from events import EventSchema, schemas

FILE_UPLOADED = "file.uploaded"
FILE_DELETED = "file.deleted"

schemas.declare(
    EventSchema(
        type=FILE_UPLOADED,
        version=1,
        fields={
            "upload_id": int,
            "owner_id": int,
            "name": str,
            "size": int,
            # Path in Django's default storage; consumers read the bytes through it.
            "storage_name": str,
        },
    )
)


def _file_uploaded_v1_to_v2(payload: dict) -> dict:
    """v1 carried neither digest nor type: guess the type from the name; digest unknown."""
    guessed = mimetypes.guess_type(payload["name"])[0] or "application/octet-stream"
    return {**payload, "content_type": guessed, "sha256": ""}


schemas.declare(
    EventSchema(
        type=FILE_UPLOADED,
        version=2,
        fields={
            "upload_id": int,
            "owner_id": int,
            "name": str,
            "size": int,
            "storage_name": str,
            "content_type": str,
            # Hex SHA-256 of the bytes; "" for events upcast from v1, which lacked it.
            "sha256": str,
        },
        upcast=_file_uploaded_v1_to_v2,
    )
)

schemas.declare(
    EventSchema(
        type=FILE_DELETED,
        version=1,
        fields={"upload_id": int, "owner_id": int, "name": str},
    )
)


def _file_deleted_v1_to_v2(payload: dict) -> dict:
    """v1 events' files were removed by the deleting process itself: nothing to remove."""
    return {**payload, "storage_name": ""}


schemas.declare(
    EventSchema(
        type=FILE_DELETED,
        version=2,
        fields={
            "upload_id": int,
            "owner_id": int,
            "name": str,
            # The stored file to remove (the ``storage`` consumer does, after commit);
            # "" for events upcast from v1.
            "storage_name": str,
        },
        upcast=_file_deleted_v1_to_v2,
    )
)
