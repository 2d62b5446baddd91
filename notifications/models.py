"""A record of every mail sent, one per (event, recipient)."""

from __future__ import annotations

from django.db import models


class Notification(models.Model):
    """One mail sent (or deliberately not sent) for one event."""

    event_id = models.UUIDField()
    recipient = models.CharField(max_length=254, blank=True)
    subject = models.CharField(max_length=255)
    message_id = models.CharField(max_length=255, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    skipped_reason = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["event_id", "recipient"], name="notification_once_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.subject} → {self.recipient or '(nobody)'}"
