"""Event handlers of the indexing consumer: thin, they call services."""

from __future__ import annotations

from events import Envelope, TwoStepHandler
from indexing import services
from indexing.extraction import Extraction


def prepare_upload(envelope: Envelope) -> Extraction | None:
    """Read and extract the uploaded file, before the delivery's transaction begins."""
    payload = envelope.payload
    return services.extract_upload_text(
        upload_id=payload["upload_id"],
        storage_name=payload["storage_name"],
        name=payload["name"],
        content_type=payload.get("content_type", ""),
    )


def apply_upload(envelope: Envelope, extraction: Extraction | None) -> None:
    """Write the index entry, inside the transaction that marks the delivery done."""
    payload = envelope.payload
    services.index_upload(
        upload_id=payload["upload_id"],
        owner_id=payload["owner_id"],
        name=payload["name"],
        extraction=extraction,
    )


index_upload = TwoStepHandler(prepare=prepare_upload, apply=apply_upload)


def remove_upload(envelope: Envelope) -> None:
    """Remove a deleted upload from the index, leaving a tombstone."""
    payload = envelope.payload
    services.remove_upload(
        upload_id=payload["upload_id"], owner_id=payload["owner_id"], name=payload["name"]
    )
