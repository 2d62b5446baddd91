"""Webhook endpoints, one row per (event, endpoint), and a log of every HTTP call."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.db import models

# Longer URLs are refused with a clear error before they reach the column.
URL_MAX_LENGTH = 2000
# Of each answer, the call log keeps this much for the owner to read.
RESPONSE_KEPT_BYTES = 1024


class Endpoint(models.Model):
    """A URL of one user's that receives their upload events, signed with ``secret``."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    url = models.URLField(max_length=URL_MAX_LENGTH)
    # Standard Webhooks: "whsec_" + base64 of the key bytes. Shown to the owner once.
    secret = models.CharField(max_length=100)
    # After a rotation the old secret still signs (a second signature) until it expires.
    previous_secret = models.CharField(max_length=100, blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    event_types = models.JSONField(
        default=list, blank=True, help_text="Event types sent to it; empty: every type."
    )
    active = models.BooleanField(default=True)
    deactivated_reason = models.CharField(max_length=255, blank=True)
    # Set by the first failed call after a success, cleared by the next 2xx: once it is
    # WEBHOOKS_DISABLE_AFTER_DAYS old, the endpoint is disabled and its owner told.
    failing_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        # Never the URL: its path or user part may hold a secret, and this text lands in
        # admin's history and in logs.
        return f"endpoint {self.pk} ({self.display_url})"

    @property
    def display_url(self) -> str:
        """Scheme, host and port only: safe to put in a log line or an email."""
        parts = urlsplit(self.url)
        host = parts.hostname or "?"
        if ":" in host:
            host = f"[{host}]"
        try:
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            port = ""
        return f"{parts.scheme}://{host}{port}/…"

    def subscribes(self, event_type: str) -> bool:
        """Whether events of ``event_type`` go to this endpoint."""
        return not self.event_types or event_type in self.event_types


class EndpointDelivery(models.Model):
    """One event for one endpoint: created when the event fans out, then how its calls went.

    An endpoint that answered 2xx (``delivered``) or refused for good (``rejected``) is
    not called again for that event: not by a duplicate message of its call, nor by a
    forced replay of the event or of the call.
    """

    class State(models.TextChoices):
        PENDING = "pending", "pending"  # fanned out, not called yet
        DELIVERED = "delivered", "delivered"  # answered 2xx
        FAILED = "failed", "failed"  # transient failure: the call's retry calls it again
        REJECTED = "rejected", "rejected"  # refused for good (4xx, redirect, refused address)

    event_id = models.UUIDField()
    endpoint = models.ForeignKey(Endpoint, on_delete=models.CASCADE, related_name="deliveries")
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
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
    # The start of the receiver's answer (RESPONSE_KEPT_BYTES at most), as text; the page
    # escapes it.
    response_body = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["endpoint", "-created_at"], name="webhook_call_recent_idx")]

    def __str__(self) -> str:
        return f"{self.event_type} → endpoint {self.endpoint_id}: {self.status_code or self.error}"
