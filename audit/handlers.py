"""Event handler of the audit consumer."""

from __future__ import annotations

from audit.services import append_entry
from events import Envelope


def record(envelope: Envelope) -> None:
    """Append every event to the audit chain."""
    append_entry(envelope)


def record_operator_action(envelope: Envelope) -> None:
    """Append an operator's action with what it selected or did (the event's payload):
    the event log is pruned in time, the audit log never."""
    append_entry(envelope, detail=dict(envelope.payload))
