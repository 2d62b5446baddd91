"""The events the webhooks app publishes: one per call to make, one per endpoint disabled.

``webhook.call`` is how each (event, endpoint) pair becomes its own kernel delivery
(``webhooks.services.fan_out``): its own retries and backoff, dead letter, replay and
Flower line, so one endpoint never waits for another. Its payload carries everything the
call needs (the original event may be pruned meanwhile); ``endpoint_id`` is the key a
per-endpoint breaker groups on. ``webhook.endpoint_disabled`` tells the owner, through
notifications, that an endpoint was switched off.
"""

from __future__ import annotations

from events import EventSchema, schemas

WEBHOOK_CALL = "webhook.call"
WEBHOOK_ENDPOINT_DISABLED = "webhook.endpoint_disabled"

schemas.declare(
    EventSchema(
        type=WEBHOOK_CALL,
        version=1,
        fields={
            "endpoint_id": int,
            "owner_id": int,
            # The event the call is about: its id is the webhook-id of every call.
            "message_id": str,
            "event_type": str,
            "occurred_at": str,
            # The body's "data", as computed when the event fanned out.
            "data": dict,
        },
    )
)

schemas.declare(
    EventSchema(
        type=WEBHOOK_ENDPOINT_DISABLED,
        version=1,
        fields={
            "endpoint_id": int,
            "owner_id": int,
            # Scheme, host and port only: the full URL may hold a secret.
            "endpoint": str,
            "reason": str,
        },
    )
)


def endpoint_aggregate(endpoint_id: int) -> str:
    """The aggregate id of an endpoint's events: prefixed, so no upload id can match it."""
    return f"webhook-endpoint:{endpoint_id}"
