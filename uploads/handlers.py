"""Handler of the storage consumer (``uploads/consumer.py``)."""

from __future__ import annotations

from events import Envelope, TwoStepHandler
from uploads import services


def _delete(envelope: Envelope) -> None:
    # Before the delivery's transaction: a slow store never holds a database lock.
    services.delete_stored_file(envelope.payload["storage_name"])


def _nothing_to_write(envelope: Envelope, result: None) -> None:
    """The ledger row marked done is the whole record."""


remove_stored_file = TwoStepHandler(prepare=_delete, apply=_nothing_to_write)
