"""The event log, which doubles as the transactional outbox, and the delivery ledger."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.db.models.functions import Now

from events.schemas import Envelope


class Event(models.Model):
    """One stored domain event. Appended in the producer's transaction; never changed."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    type = models.CharField(max_length=100, db_index=True)
    version = models.PositiveSmallIntegerField()
    occurred_at = models.DateTimeField(db_index=True)
    aggregate_id = models.CharField(max_length=64, db_index=True)
    actor = models.BigIntegerField(null=True, blank=True, help_text="User id, if a user acted.")
    payload = models.JSONField()
    correlation_id = models.CharField(max_length=64, blank=True, default="")
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["occurred_at", "id"]
        indexes = [models.Index(fields=["recorded_at"], name="event_recorded_idx")]

    def __str__(self) -> str:
        return f"{self.type} v{self.version} {self.aggregate_id} ({self.id})"

    def to_envelope(self) -> Envelope:
        """The event as stored, at its stored version (not yet upcast)."""
        return Envelope(
            id=self.id,
            type=self.type,
            version=self.version,
            occurred_at=self.occurred_at,
            aggregate_id=self.aggregate_id,
            actor=self.actor,
            payload=self.payload,
            correlation_id=self.correlation_id,
        )


class Delivery(models.Model):
    """The fate of one event at one consumer: the consumer's dedupe ledger."""

    class State(models.TextChoices):
        PENDING = "pending", "pending"
        RUNNING = "running", "running"
        RETRYING = "retrying", "retrying"
        DONE = "done", "done"
        DEAD = "dead", "dead"

    # Not finished yet. RUNNING is claimed by an attempt that holds a lease.
    OPEN_STATES = (State.PENDING, State.RUNNING, State.RETRYING)
    # Waiting for a message to run them: what a claim may take without a lease to expire.
    WAITING_STATES = (State.PENDING, State.RETRYING)

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    consumer = models.CharField(max_length=100)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(
        default=0, help_text="Attempts started (counted when claimed); fences a late finisher."
    )
    attempts_at_redrive = models.PositiveIntegerField(
        default=0,
        help_text=(
            "Attempts not counted against the budget: those made before its last redrive, "
            "and those parked under an open breaker."
        ),
    )
    last_error = models.TextField(blank=True, default="")
    task_id = models.CharField(
        max_length=64, blank=True, default="", help_text="Last Celery task id."
    )
    enqueued_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When a message for it was last sent (database clock); empty: none is out.",
    )
    lease_expires_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="While running: when the attempt counts as dead (time limit plus margin).",
    )
    retry_at = models.DateTimeField(null=True, blank=True, help_text="When the next retry is due.")
    breaker_key = models.CharField(
        max_length=200,
        blank=True,
        default="",
        help_text="Which of its consumer's breakers it answers to (Consumer.breaker_key); "
        "empty: the consumer's own.",
    )
    completed_at = models.DateTimeField(null=True, blank=True)
    # The database's clock: the relay compares it with Now(), never a host's clock.
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(
                fields=["event", "consumer"], name="delivery_event_consumer_uniq"
            )
        ]
        indexes = [
            models.Index(
                fields=["state", "enqueued_at"],
                name="delivery_open_idx",
                condition=Q(state__in=["pending", "running", "retrying"]),
            ),
            models.Index(fields=["consumer", "state"], name="delivery_consumer_state_idx"),
            # What the relay reads every pass (events.relay), each through its own partial
            # index, so a pass costs the open rows it looks at, never the whole table.
            models.Index(
                fields=["retry_at"],
                name="delivery_unsent_idx",
                condition=Q(state__in=["pending", "retrying"], enqueued_at__isnull=True),
            ),
            models.Index(
                fields=["lease_expires_at"],
                name="delivery_lease_idx",
                condition=Q(state="running"),
            ),
            models.Index(
                fields=["consumer", "enqueued_at"],
                name="delivery_sent_idx",
                condition=Q(state__in=["pending", "retrying"], enqueued_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.consumer} ← {self.event_id} [{self.state}]"


class DeliveryAttempt(models.Model):
    """One try of a delivery by a worker: what an operator reads to see what happened."""

    class Outcome(models.TextChoices):
        DONE = "done", "done"
        RETRY = "retry", "retry"
        DEAD = "dead", "dead"

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="tries")
    number = models.PositiveIntegerField()
    task_id = models.CharField(max_length=64, blank=True, default="")
    worker = models.CharField(max_length=200, blank=True, default="")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["delivery", "number"]

    def __str__(self) -> str:
        return f"try {self.number} of {self.delivery_id}: {self.outcome}"


class ConsumerState(models.Model):
    """What the database knows about one consumer, shared by every host.

    ``declared_at``: when a process running code that registers this consumer last said
    so (its relay passes, its workers starting). A relay that does not know a consumer
    dead-letters its deliveries only when no process has declared it for
    ``EVENTS_RETIRED_CONSUMER_GRACE_SECONDS``: during a rolling deploy, older code must
    not dead-letter a consumer that newer code added.

    ``paused``: an operator holds the consumer (``consumers pause``). Its claims are
    refused in the claim statement itself, a message that arrives parks its delivery
    (no message out, no attempt counted) and the relay leaves it alone until ``resume``.
    Here, not in a process, so a pause outlives restarts and holds on every host.
    """

    name = models.CharField(max_length=100, primary_key=True)
    declared_at = models.DateTimeField(db_default=Now())
    paused = models.BooleanField(default=False)
    paused_reason = models.CharField(max_length=500, blank=True, default="")
    paused_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "consumer"

    def __str__(self) -> str:
        return self.name


class Breaker(models.Model):
    """A circuit breaker of one consumer, or of one key of it (a webhook endpoint).

    A row exists only once a delivery under it failed transiently, so a consumer that
    never fails never writes here. ``failures`` counts consecutive transient failures
    (of different deliveries: one delivery failing again and again is its own problem);
    at ``EVENTS_BREAKER_FAILURES`` the breaker opens (``opened_at``): its deliveries
    park with no attempt counted (the claim refuses them, the relay leaves them), and
    the relay sends one of them, ``probe_delivery_id``, every
    ``EVENTS_BREAKER_PROBE_SECONDS`` (``probe_at``). A success under it deletes the row:
    closed, and the parked deliveries are due at once. ``events.breaker`` runs it.
    """

    consumer = models.CharField(max_length=100)
    key = models.CharField(max_length=200, blank=True, default="", db_column="breaker_key")
    failures = models.PositiveIntegerField(default=0)
    opened_at = models.DateTimeField(null=True, blank=True)
    probe_at = models.DateTimeField(null=True, blank=True)
    probe_delivery_id = models.BigIntegerField(null=True, blank=True)
    # The delivery whose failure was counted last: the same delivery failing again
    # (a poison message) is not a dependency down, and does not count twice in a row.
    last_failed_delivery_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["consumer", "key"], name="breaker_consumer_key_uniq")
        ]

    def __str__(self) -> str:
        state = "open" if self.opened_at else f"{self.failures} failures"
        return f"{self.consumer}[{self.key}] {state}" if self.key else f"{self.consumer} {state}"
