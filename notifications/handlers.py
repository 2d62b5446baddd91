"""Event handlers of the notifications consumer: thin, they call services."""

from __future__ import annotations

from events.schemas import Envelope
from notifications.services import notify_owner


def notify_upload(envelope: Envelope) -> None:
    """Tell the owner their file arrived."""
    name = envelope.payload["name"]
    notify_owner(
        envelope,
        subject=f"Uploaded: {name}",
        body=f"Your file {name} ({envelope.payload['size']} bytes) was uploaded.",
    )


def notify_deletion(envelope: Envelope) -> None:
    """Tell the owner their file was deleted."""
    name = envelope.payload["name"]
    notify_owner(envelope, subject=f"Deleted: {name}", body=f"Your file {name} was deleted.")
