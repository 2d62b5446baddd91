"""The webhooks consumer, declared once; ``events`` finds this module and builds its task.

Its name is written here and nowhere else: other code that needs it reads
``webhooks.consumer.consumer.name`` (imported where used, as this module imports the handlers).
"""

from events import Consumer, register_consumer
from webhooks import handlers
from webhooks.services import EVENT_TYPES

consumer = register_consumer(
    Consumer(
        name="webhooks",
        queue="webhooks",
        handlers=dict.fromkeys(EVENT_TYPES, handlers.send_event),
        # Each endpoint may take its connect and read timeouts (3 + 10 s); a user has few.
        time_limit=120,
        soft_time_limit=100,
        # Calls mostly wait on the network: more processes than cores pay off.
        concurrency=4,
    )
)
