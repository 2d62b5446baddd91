"""Event handlers of the notifications consumer: thin, they call services.

Each is a ``TwoStepHandler`` whose ``prepare`` claims, sends and records the mail
before the delivery row is locked (``notifications.services.notify_owner``), so the
SMTP exchange holds no database lock. ``apply``, inside the delivery's transaction,
has nothing left to write.
"""

from __future__ import annotations

from events import Envelope, TwoStepHandler
from notifications.models import Notification
from notifications.services import notify_owner


def prepare_upload(envelope: Envelope) -> Notification:
    """Tell the owner their file arrived."""
    return notify_owner(envelope, template="file_uploaded")


def prepare_deletion(envelope: Envelope) -> Notification:
    """Tell the owner their file was deleted."""
    return notify_owner(envelope, template="file_deleted")


def prepare_webhook_disabled(envelope: Envelope) -> Notification:
    """Tell the owner one of their webhook endpoints was disabled, and why."""
    return notify_owner(envelope, template="webhook_disabled")


def nothing_to_apply(envelope: Envelope, notification: Notification) -> None:
    """The mail and its record were committed in ``prepare``; the ledger marks it done."""


notify_upload = TwoStepHandler(prepare=prepare_upload, apply=nothing_to_apply)
notify_deletion = TwoStepHandler(prepare=prepare_deletion, apply=nothing_to_apply)
notify_webhook_disabled = TwoStepHandler(prepare=prepare_webhook_disabled, apply=nothing_to_apply)
