"""Appending to and verifying the audit hash chain.

What ``verify_chain`` detects: an entry edited, inserted or removed anywhere (its hash or
the next entry's ``prev_hash`` no longer fits); entries removed from the end, or all of
them, while the event ledger still holds their events (each event whose audit delivery is
``done`` must have its entry); and, against a head hash and count kept outside the
database, any removal from the end at all. What it cannot detect: someone with write
access to the database who rewrites the whole chain from some entry on and the ledger to
match, when no head was kept elsewhere; entries removed from the end after their events
were pruned (``prune_events``) and after the last head kept elsewhere.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

from django.db import connection
from django.utils import timezone

from audit.models import AuditEntry
from events import Envelope
from events.models import Delivery
from housekeeping.progress import ProgressCallback

GENESIS_HASH = "0" * 64
# Any fixed number: the key of the PostgreSQL advisory lock that serializes appends.
_CHAIN_LOCK_KEY = 0x0A0D17


def payload_digest(payload: object) -> str:
    """SHA-256 of the payload's canonical JSON."""
    return hashlib.sha256(_canonical(payload).encode()).hexdigest()


def entry_hash(entry: AuditEntry) -> str:
    """SHA-256 over an entry's content and the previous entry's hash."""
    content = {
        "sequence": entry.sequence,
        "event_id": str(entry.event_id),
        "event_type": entry.event_type,
        "actor": entry.actor,
        "upload_id": entry.upload_id,
        "payload_digest": entry.payload_digest,
        "occurred_at": entry.occurred_at.isoformat(),
        "recorded_at": entry.recorded_at.isoformat(),
        "prev_hash": entry.prev_hash,
    }
    if entry.detail:
        # Only when present: entries without it hash exactly as before the field existed.
        content["detail"] = entry.detail
    return hashlib.sha256(_canonical(content).encode()).hexdigest()


def append_entry(envelope: Envelope, *, detail: dict | None = None) -> AuditEntry:
    """Append ``envelope`` to the chain once; a replayed event returns its existing entry.

    ``detail`` (JSON) is stored in the entry and covered by its hash.

    Must run inside a transaction. On PostgreSQL an advisory lock serializes appends;
    on SQLite the immediate transaction already does. The unique ``prev_hash`` is the
    last line of defence: a racing append fails and is retried, never forks the chain.
    """
    existing = AuditEntry.objects.filter(event_id=envelope.id).first()
    if existing is not None:
        return existing
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])
    head = AuditEntry.objects.order_by("-sequence").values_list("hash", "sequence").first()
    prev_hash, sequence = head or (GENESIS_HASH, 0)
    entry = AuditEntry(
        sequence=sequence + 1,
        event_id=envelope.id,
        event_type=envelope.type,
        actor=envelope.actor,
        upload_id=envelope.aggregate_id,
        payload_digest=payload_digest(dict(envelope.payload)),
        # Round-tripped through JSON now, so the hash is computed over what is stored.
        detail=json.loads(_canonical(detail or {})),
        occurred_at=envelope.occurred_at,
        recorded_at=timezone.now(),
        prev_hash=prev_hash,
    )
    entry.hash = entry_hash(entry)
    entry.save()
    return entry


@dataclass(frozen=True)
class ChainReport:
    """``checked`` entries were verified, ending at ``head``; ``reason`` is the first problem.

    ``broken`` is the first entry that does not fit, when the problem is one entry's.
    """

    checked: int
    broken: AuditEntry | None = None
    reason: str = ""
    head: str = GENESIS_HASH

    @property
    def intact(self) -> bool:
        """Whether no problem was found."""
        return not self.reason


def verify_chain(
    chunk_size: int = 2000,
    on_progress: ProgressCallback | None = None,
    *,
    expect_head: str | None = None,
    expect_count: int | None = None,
) -> ChainReport:
    """Walk the chain in order and report the first problem.

    Each entry must carry the next sequence number, point at the previous entry's hash
    and match its own. Then every event the ledger says the audit consumer finished must
    have its entry (catches entries removed from the end, or all of them). Then the
    anchors kept elsewhere: at least ``expect_count`` entries, and ``expect_head`` an
    entry's hash (entry ``expect_count`` when both are given).

    Reads ``chunk_size`` entries at a time, so memory stays flat however long the log
    is; ``on_progress`` receives the number of entries checked after each chunk.
    """
    previous = GENESIS_HASH
    checked = 0
    anchored_at: int | None = None
    for entry in _entries_in_order(chunk_size):
        if entry.sequence != checked + 1:
            return ChainReport(
                checked,
                entry,
                f"sequence is {entry.sequence}, expected {checked + 1} "
                "(entries before it are missing)",
                previous,
            )
        if entry.prev_hash != previous:
            return ChainReport(
                checked, entry, "prev_hash does not match the previous entry", previous
            )
        if entry_hash(entry) != entry.hash:
            return ChainReport(checked, entry, "content does not match its hash", previous)
        previous = entry.hash
        checked += 1
        if entry.hash == expect_head:
            anchored_at = entry.sequence
        if on_progress is not None and checked % chunk_size == 0:
            on_progress(checked)
    if on_progress is not None:
        on_progress(checked)
    problem = _unrecorded_event(checked) or _anchor_problem(
        checked, anchored_at, expect_head=expect_head, expect_count=expect_count
    )
    return ChainReport(checked, None, problem, previous)


def _unrecorded_event(checked: int) -> str:
    """The first event the ledger says audit finished but which has no entry, said plainly."""
    # Imported here: the consumer module imports the handlers, which import this one.
    from audit.consumer import consumer

    missing = (
        Delivery.objects.filter(consumer=consumer.name, state=Delivery.State.DONE)
        .exclude(event_id__in=AuditEntry.objects.values("event_id"))
        .select_related("event")
        .order_by("event__recorded_at", "pk")
        .first()
    )
    if missing is None:
        return ""
    return (
        f"event {missing.event_id} ({missing.event.type}) is done for the audit consumer "
        f"but has no audit entry: entries were removed ({checked} entries remain)"
    )


def _anchor_problem(
    checked: int, anchored_at: int | None, *, expect_head: str | None, expect_count: int | None
) -> str:
    if expect_count is not None and checked < expect_count:
        return f"{checked} entries, expected at least {expect_count}: entries were removed"
    if expect_head is None:
        return ""
    if anchored_at is None:
        return f"expected head {expect_head} is not in the chain: entries were removed or rewritten"
    if expect_count is not None and anchored_at != expect_count:
        return f"expected head {expect_head} is entry {anchored_at}, expected entry {expect_count}"
    return ""


def _entries_in_order(chunk_size: int) -> Iterator[AuditEntry]:
    last = 0
    while True:
        chunk = list(AuditEntry.objects.filter(sequence__gt=last).order_by("sequence")[:chunk_size])
        if not chunk:
            return
        yield from chunk
        last = chunk[-1].sequence


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
