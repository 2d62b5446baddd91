"""Event handlers of the webhooks consumers: thin, they call services.

``fan_out`` runs inside the delivery's finishing transaction, so the ``webhook.call``
events it records commit with the delivery's ``done`` (or not at all). ``call`` is a
``TwoStepHandler`` whose ``prepare`` makes the HTTP call and records it before the
delivery row is locked, so no HTTP call holds a database lock; ``apply`` has nothing left
to write.
"""

from __future__ import annotations

from events import Envelope, TwoStepHandler
from webhooks.services import call_for_event, fan_out_event


def fan_out(envelope: Envelope) -> None:
    """One ``webhook.call`` event per endpoint of the owner that subscribes to this type."""
    fan_out_event(envelope)


def nothing_to_apply(envelope: Envelope, prepared: None) -> None:
    """The call and its records were committed in ``prepare``; the ledger marks it done."""


call = TwoStepHandler(prepare=call_for_event, apply=nothing_to_apply)
