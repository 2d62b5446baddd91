"""The events ``uploads`` publishes: the only part of this app consumers may import."""

from __future__ import annotations

from events.schemas import EventSchema, schemas

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

schemas.declare(
    EventSchema(
        type=FILE_DELETED,
        version=1,
        fields={"upload_id": int, "owner_id": int, "name": str},
    )
)
