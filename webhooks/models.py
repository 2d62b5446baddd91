"""Webhook endpoints, one claim row per (event, endpoint), and a log of every HTTP call."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Endpoint(models.Model):
    """A URL of one user's that receives their upload events, signed with ``secret``."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    url = models.URLField(max_length=2000)
    # Standard Webhooks: "whsec_" + base64 of the key bytes. Shown to the owner once.
    secret = models.CharField(max_length=100)
    event_types = models.JSONField(
        default=list, blank=True, help_text="Event types sent to it; empty: every type."
    )
    active = models.BooleanField(default=True)
    deactivated_reason = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return self.url

    def subscribes(self, event_type: str) -> bool:
        """Whether events of ``event_type`` go to this endpoint."""
        return not self.event_types or event_type in self.event_types


class EndpointDelivery(models.Model):
    """One event for one endpoint: claimed while an attempt calls it, then final or failed.

    The unique (event, endpoint) pair decides which of two racing attempts calls the
    endpoint, and an endpoint that answered 2xx (``delivered``) or refused for good
    (``rejected``) is never called again for that event, whatever retries or replays.
    """

    class State(models.TextChoices):
        CLAIMED = "claimed", "claimed"  # an attempt is calling it (or crashed while calling)
        DELIVERED = "delivered", "delivered"  # answered 2xx
        FAILED = "failed", "failed"  # transient failure: the next attempt calls it again
        REJECTED = "rejected", "rejected"  # refused for good (4xx, redirect, refused address)

    event_id = models.UUIDField()
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="deliveries")
    state = models.CharField(max_length=10, choices=State.choices, default=State.CLAIMED)
    claimed_at = models.DateTimeField(null=True, blank=True)
    not_before = models.DateTimeField(
        null=True, blank=True, help_text="The receiver's Retry-After: no call before this."
    )
    calls = models.PositiveIntegerField(default=0)
    last_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "endpoint deliveries"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["event_id", "endpoint"], name="webhook_once_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.event_id} → {self.endpoint_id} [{self.state}]"


class Call(models.Model):
    """One HTTP request to an endpoint (an event or a test ping) and how it ended."""

    class Outcome(models.TextChoices):
        DELIVERED = "delivered", "delivered"
        TRANSIENT = "transient", "failed, retried"
        REJECTED = "rejected", "rejected"

    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="calls")
    event_id = models.UUIDField(null=True, blank=True, help_text="Empty for a test ping.")
    event_type = models.CharField(max_length=100)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["endpoint", "-created_at"], name="webhook_call_recent_idx")]

    def __str__(self) -> str:
        return f"{self.event_type} → {self.endpoint_id}: {self.status_code or self.error}"
