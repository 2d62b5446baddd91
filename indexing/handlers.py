"""Event handlers of the indexing consumer: thin, they call services."""

from __future__ import annotations

from events.schemas import Envelope
from indexing import services


def index_upload(envelope: Envelope) -> None:
    """Index a new upload's text."""
    payload = envelope.payload
    services.index_upload(
        upload_id=payload["upload_id"],
        owner_id=payload["owner_id"],
        name=payload["name"],
        storage_name=payload["storage_name"],
    )


def remove_upload(envelope: Envelope) -> None:
    """Remove a deleted upload from the index."""
    payload = envelope.payload
    services.remove_upload(
        upload_id=payload["upload_id"], owner_id=payload["owner_id"], name=payload["name"]
    )
