"""The storage consumer: removes a deleted upload's stored file (or S3 object) after commit.

``delete_upload`` only records ``file.deleted``; the file goes here, so a store that is
down or cut off (S3 behind a partition, a full disk) costs no request anything and loses
nothing: the delivery retries with the pipeline's backoff, shows as ``retrying`` in
``event_status`` and admin meanwhile, and ``replay_events --consumer storage`` redoes it.
Its name is written here and nowhere else.
"""

from events import Consumer, register_consumer
from uploads import handlers
from uploads.events import FILE_DELETED

consumer = register_consumer(
    Consumer(
        name="storage",
        queue="storage",
        handlers={FILE_DELETED: handlers.remove_stored_file},
        # Until it succeeds, in practice: at the default backoff cap (600 s) this is a
        # week of tries before it goes dead, still replayable then.
        max_attempts=1000,
        # One DELETE request; boto3's own retries stay well inside.
        time_limit=60,
        soft_time_limit=45,
        concurrency=1,
    )
)
