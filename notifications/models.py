"""A record of every mail sent, one per (event, recipient), and the claim that guards it."""

from __future__ import annotations

from django.db import models


class Notification(models.Model):
    """One mail for one event and recipient: claimed, then sent, skipped or rejected.

    The row is created (``claimed``) before the mail goes out, and the unique
    (event, recipient) pair decides which of two racing attempts sends it.
    """

    class State(models.TextChoices):
        CLAIMED = "claimed", "claimed"  # an attempt is sending it (or crashed while sending)
        SENT = "sent", "sent"  # the mail server accepted it
        SKIPPED = "skipped", "skipped"  # deliberately not sent; ``reason`` says why
        REJECTED = "rejected", "rejected"  # the mail server refused it for good; ``reason``

    event_id = models.UUIDField()
    recipient = models.CharField(max_length=254, blank=True)
    subject = models.CharField(max_length=255)
    state = models.CharField(max_length=10, choices=State.choices, default=State.CLAIMED)
    claimed_at = models.DateTimeField(
        null=True, blank=True, help_text="When the attempt now holding the claim took it."
    )
    message_id = models.CharField(max_length=255, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(
        blank=True, help_text="Why it was skipped or rejected (the mail server's reply)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["event_id", "recipient"], name="notification_once_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.subject} → {self.recipient or '(nobody)'} [{self.state}]"
