"""The events kernel: outbox, delivery ledger, relay and consumer registry.

What a consumer app (and the producer) may import is listed in ``__all__``; everything
else in this package is internal and may change. ``docs/consumers.md`` shows what a new
consumer writes, with a complete example; ``events.testing`` runs a handler through the
real claim and finish in a test.

The names that need Django's models (``record_event``, ``claim_effect``) load on first
use, so ``from events import Consumer`` works in a ``consumer.py`` while apps load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from events.exceptions import DeliveryBusy, DependencyUnavailable, PermanentError, TransientError
from events.registry import Consumer, Forgotten, Handler, TwoStepHandler, register_consumer
from events.schemas import Envelope, EventSchema, schemas

if TYPE_CHECKING:
    from events.effects import claim_effect
    from events.outbox import record_event

__all__ = [
    "Consumer",
    "DeliveryBusy",
    "DependencyUnavailable",
    "Envelope",
    "EventSchema",
    "Forgotten",
    "Handler",
    "PermanentError",
    "TransientError",
    "TwoStepHandler",
    "claim_effect",
    "record_event",
    "register_consumer",
    "schemas",
]

_LAZY = {
    "claim_effect": "events.effects",
    "record_event": "events.outbox",
}


def __getattr__(name: str) -> Any:
    """Load the model-dependent names of ``__all__`` on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'events' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
