"""The audit consumer, declared once; ``events`` finds this module and builds its task.

Its name is written here and nowhere else: other code that needs it reads
``audit.consumer.consumer.name`` (imported where used, as this module imports the handlers).
"""

from audit import handlers
from events import Consumer, register_consumer
from housekeeping.events import OPERATOR_CONTROL, OPERATOR_REDRIVE, OPERATOR_REPLAY
from uploads.events import FILE_DELETED, FILE_UPLOADED

consumer = register_consumer(
    Consumer(
        name="audit",
        queue="audit",
        handlers={
            FILE_UPLOADED: handlers.record,
            FILE_DELETED: handlers.record,
            OPERATOR_REDRIVE: handlers.record_operator_action,
            OPERATOR_CONTROL: handlers.record_operator_action,
            OPERATOR_REPLAY: handlers.record_operator_action,
        },
        # Concurrent appends that lose the race for the chain head retry quickly.
        max_attempts=12,
        # One process: concurrent appends would only race for the head of the hash chain.
        concurrency=1,
    )
)
