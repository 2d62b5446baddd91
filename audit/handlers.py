"""Event handler of the audit consumer."""

from __future__ import annotations

from audit.services import append_entry
from events import Envelope


def record(envelope: Envelope) -> None:
    """Append every event to the audit chain."""
    append_entry(envelope)
