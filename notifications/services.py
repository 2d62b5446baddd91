"""Emailing an upload's owner about what happened to it."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage
from django.utils import timezone

from events.schemas import Envelope
from notifications.models import Notification


def message_id_for(event_id: object, recipient: str) -> str:
    """A Message-ID derived from the event, so a resent duplicate can be recognised."""
    domain = settings.DEFAULT_FROM_EMAIL.rpartition("@")[2] or "localhost"
    recipient_tag = hashlib.sha256(recipient.lower().encode()).hexdigest()[:12]
    return f"<event-{event_id}.{recipient_tag}@{domain}>"


def notify_owner(envelope: Envelope, *, subject: str, body: str) -> Notification:
    """Email the owner of the upload in ``envelope`` once; record it.

    Runs inside the delivery's transaction: the ``Notification`` row commits with the
    delivery. A crash after the mail server accepted the message and before that commit
    resends it on redelivery, with the same Message-ID so it can be dropped downstream.
    """
    owner = get_user_model().objects.filter(pk=envelope.payload["owner_id"]).first()
    recipient = (owner.email if owner else "") or ""
    existing = Notification.objects.filter(event_id=envelope.id, recipient=recipient).first()
    if existing is not None:
        return existing
    notification = Notification(event_id=envelope.id, recipient=recipient, subject=subject)
    if not recipient:
        notification.skipped_reason = (
            "owner has no email address" if owner else "owner no longer exists"
        )
        notification.save()
        return notification
    notification.message_id = message_id_for(envelope.id, recipient)
    message = EmailMessage(
        subject=subject,
        body=body,
        to=[recipient],
        headers={"Message-ID": notification.message_id},
    )
    message.send(fail_silently=False)
    notification.sent_at = timezone.now()
    notification.save()
    return notification
