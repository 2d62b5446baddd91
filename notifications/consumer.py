"""The notifications consumer, declared once; ``events`` finds this module and builds its task.

Its name is written here and nowhere else: other code that needs it reads
``notifications.consumer.consumer.name`` (imported where used, as this module imports the handlers).
"""

from events import Consumer, register_consumer
from notifications import handlers, services
from uploads.events import FILE_DELETED, FILE_UPLOADED
from webhooks.events import WEBHOOK_ENDPOINT_DISABLED

consumer = register_consumer(
    Consumer(
        name="notifications",
        queue="notifications",
        handlers={
            FILE_UPLOADED: handlers.notify_upload,
            FILE_DELETED: handlers.notify_deletion,
            WEBHOOK_ENDPOINT_DISABLED: handlers.notify_webhook_disabled,
        },
        # Also how long a mail's claim protects the attempt sending it (events.effects).
        time_limit=60,
        soft_time_limit=45,
        concurrency=2,
        forget_events=services.forget_mails,
    )
)
