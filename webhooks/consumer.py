"""The webhooks consumers, declared once; ``events`` finds this module and builds their tasks.

Two consumers, so that one endpoint never delays another:

- ``webhooks`` fans each upload event out: in its finishing transaction it records one
  ``webhook.call`` event per subscribed endpoint. Database work only, quick.
- ``webhook_calls`` makes exactly one HTTP call per delivery. Each call is its own
  delivery with its own retries, backoff and dead letter; a slow endpoint holds one
  process for at most ``WEBHOOKS_CALL_DEADLINE_SECONDS``.

Their names are written here and nowhere else: other code reads ``fan_out.name`` and
``calls.name`` (imported where used, as this module imports the handlers).
"""

from events import Consumer, Envelope, register_consumer
from webhooks import handlers, services
from webhooks.events import WEBHOOK_CALL
from webhooks.services import EVENT_TYPES

fan_out = register_consumer(
    Consumer(
        name="webhooks",
        queue="webhooks",
        handlers=dict.fromkeys(EVENT_TYPES, handlers.fan_out),
        time_limit=30,
        soft_time_limit=20,
    )
)


def endpoint_breaker_key(envelope: Envelope) -> str:
    """A call's breaker key: its endpoint, so one broken endpoint parks only its own calls."""
    return str(envelope.payload["endpoint_id"])


calls = register_consumer(
    Consumer(
        name="webhook_calls",
        queue="webhook_calls",
        handlers={WEBHOOK_CALL: handlers.call},
        # One call takes at most WEBHOOKS_CALL_DEADLINE_SECONDS (10 by default) plus a
        # few statements; keep that deadline well below the soft limit.
        time_limit=60,
        soft_time_limit=45,
        # Calls mostly wait on the network: more processes than cores pay off.
        concurrency=4,
        forget_events=services.forget_calls,
        prune_before=services.prune_calls_before,
        # One breaker per endpoint: a user's broken endpoint never parks another's calls.
        breaker_key=endpoint_breaker_key,
    )
)
