"""Event handlers of the webhooks consumer: thin, they call services.

A ``TwoStepHandler`` whose ``prepare`` claims, calls and records each endpoint before the
delivery row is locked (``webhooks.services.deliver_event``), so no HTTP call holds a
database lock. ``apply``, inside the delivery's transaction, has nothing left to write.
"""

from __future__ import annotations

from events import Envelope, TwoStepHandler
from webhooks.services import deliver_event


def nothing_to_apply(envelope: Envelope, prepared: None) -> None:
    """The calls and their records were committed in ``prepare``; the ledger marks it done."""


send_event = TwoStepHandler(prepare=deliver_event, apply=nothing_to_apply)
