"""The append-only, hash-chained audit log."""

from __future__ import annotations

from django.db import models


class AuditEntry(models.Model):
    """One event, recorded once. ``hash`` covers the content, ``sequence`` and ``prev_hash``.

    ``prev_hash`` and ``sequence`` are unique, so two appends that read the same head
    cannot both commit: the chain cannot fork, whatever the number of workers.
    ``sequence`` counts entries from 1, so a head and a count kept outside the database
    pin down exactly which entry must still be there (``verify_audit --expect-head``).
    """

    sequence = models.PositiveBigIntegerField(unique=True)
    event_id = models.UUIDField(unique=True)
    event_type = models.CharField(max_length=100)
    actor = models.BigIntegerField(null=True, blank=True)
    upload_id = models.CharField(max_length=64, db_index=True)
    payload_digest = models.CharField(max_length=64)
    occurred_at = models.DateTimeField()
    recorded_at = models.DateTimeField()
    # What an operator's bulk action selected (``operator.*`` events: who, which filter,
    # how many confirmed), kept here because retention prunes the event log. Empty for
    # file events; then it is left out of the hash, so older entries keep theirs.
    detail = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64, unique=True)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["sequence"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"#{self.sequence} {self.event_type} {self.upload_id}"
