"""The indexing consumer, declared once; ``events`` finds this module and builds its task.

Its name is written here and nowhere else: other code that needs it reads
``indexing.consumer.consumer.name`` (imported where used, as this module imports the handlers).
"""

from events import Consumer, register_consumer
from indexing import handlers, services
from uploads.events import FILE_DELETED, FILE_UPLOADED

consumer = register_consumer(
    Consumer(
        name="indexing",
        queue="indexing",
        handlers={
            # Two steps: the file is read and its text extracted before the
            # delivery's transaction (and SQLite's write lock) is taken.
            FILE_UPLOADED: handlers.index_upload,
            FILE_DELETED: handlers.remove_upload,
        },
        concurrency=2,
        forget_events=services.forget_tombstones,
    )
)
