"""Appending to and verifying the audit hash chain."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

from django.db import connection
from django.utils import timezone

from audit.models import AuditEntry
from events.db import one_or_none
from events.progress import ProgressCallback
from events.schemas import Envelope

GENESIS_HASH = "0" * 64
# Any fixed number: the key of the PostgreSQL advisory lock that serializes appends.
_CHAIN_LOCK_KEY = 0x0A0D17


def payload_digest(payload: object) -> str:
    """SHA-256 of the payload's canonical JSON."""
    return hashlib.sha256(_canonical(payload).encode()).hexdigest()


def entry_hash(entry: AuditEntry) -> str:
    """SHA-256 over an entry's content and the previous entry's hash."""
    content = {
        "event_id": str(entry.event_id),
        "event_type": entry.event_type,
        "actor": entry.actor,
        "upload_id": entry.upload_id,
        "payload_digest": entry.payload_digest,
        "occurred_at": entry.occurred_at.isoformat(),
        "recorded_at": entry.recorded_at.isoformat(),
        "prev_hash": entry.prev_hash,
    }
    return hashlib.sha256(_canonical(content).encode()).hexdigest()


def append_entry(envelope: Envelope) -> AuditEntry:
    """Append ``envelope`` to the chain once; a replayed event returns its existing entry.

    Must run inside a transaction. On PostgreSQL an advisory lock serializes appends;
    on SQLite the immediate transaction already does. The unique ``prev_hash`` is the
    last line of defence: a racing append fails and is retried, never forks the chain.
    """
    existing = one_or_none(AuditEntry.objects.filter(event_id=envelope.id))
    if existing is not None:
        return existing
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])
    head = AuditEntry.objects.order_by("-pk").values_list("hash", flat=True).first()
    entry = AuditEntry(
        event_id=envelope.id,
        event_type=envelope.type,
        actor=envelope.actor,
        upload_id=envelope.aggregate_id,
        payload_digest=payload_digest(dict(envelope.payload)),
        occurred_at=envelope.occurred_at,
        recorded_at=timezone.now(),
        prev_hash=head or GENESIS_HASH,
    )
    entry.hash = entry_hash(entry)
    entry.save()
    return entry


@dataclass(frozen=True)
class ChainReport:
    """``checked`` entries were verified; ``broken`` is the first bad one, with why."""

    checked: int
    broken: AuditEntry | None = None
    reason: str = ""


def verify_chain(
    chunk_size: int = 2000, on_progress: ProgressCallback | None = None
) -> ChainReport:
    """Walk the chain in order and report the first entry that does not fit.

    Reads ``chunk_size`` entries at a time, so memory stays flat however long the log
    is; ``on_progress`` receives the number of entries checked after each chunk.
    """
    previous = GENESIS_HASH
    checked = 0
    for entry in _entries_in_order(chunk_size):
        if entry.prev_hash != previous:
            return ChainReport(checked, entry, "prev_hash does not match the previous entry")
        if entry_hash(entry) != entry.hash:
            return ChainReport(checked, entry, "content does not match its hash")
        previous = entry.hash
        checked += 1
        if on_progress is not None and checked % chunk_size == 0:
            on_progress(checked)
    if on_progress is not None:
        on_progress(checked)
    return ChainReport(checked)


def _entries_in_order(chunk_size: int) -> Iterator[AuditEntry]:
    last_pk = 0
    while True:
        chunk = list(AuditEntry.objects.filter(pk__gt=last_pk).order_by("pk")[:chunk_size])
        if not chunk:
            return
        yield from chunk
        last_pk = chunk[-1].pk


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
