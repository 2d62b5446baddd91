"""The Celery app's settings (``CELERY_`` namespace, read by ``config/celery.py``).

Each value carries the Celery docs link that says why it has that value; the delivery
guarantees rest on several of them (``config/checks.py`` refuses a worker that breaks one).
"""

from __future__ import annotations

from celery.schedules import crontab

from config.env import VAR_DIR, env
from config.settings.events import EVENTS_RELAY_INTERVAL_SECONDS

# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-url
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="redis://127.0.0.1:6379/0")
# Never pickle: a message must not be able to run code in a worker.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#accept-content
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_EVENT_SERIALIZER = "json"
# The delivery ledger is the record of what happened; no result backend is needed.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-ignore-result
CELERY_TASK_IGNORE_RESULT = True
# Ack after the handler ran, so a worker that dies mid-task leaves the message for
# another one; reject (requeue) when the pool process is killed.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-acks-late
CELERY_TASK_ACKS_LATE = True
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-reject-on-worker-lost
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# Unacked messages come back after this long. No message carries a delay (retries wait
# in the ledger), so it must exceed what a worker may hold one for: the prefetch
# multiplier times the longest task time limit, plus EVENTS_LEASE_MARGIN_SECONDS
# (config/checks.py refuses less), or Redis hands a message out twice.
# https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html#visibility-timeout
CELERY_VISIBILITY_TIMEOUT = env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)
# Short socket timeouts and few connection retries keep a publish from hanging a web
# request when Redis is down (celery#4556, #4296): the event waits in the outbox.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-transport-options
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    "socket_connect_timeout": 1,
    "socket_timeout": 5,
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-connection-timeout
CELERY_BROKER_CONNECTION_TIMEOUT = 2
# Bounded retry for every publish; the relay re-enqueues what still failed.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-publish-retry-policy
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
# Workers keep retrying to reach the broker at startup instead of exiting.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-connection-retry-on-startup
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Default time limits; each consumer may declare its own (events.registry.Consumer).
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-time-limit
CELERY_TASK_TIME_LIMIT = 120
CELERY_TASK_SOFT_TIME_LIMIT = 100
# Task events cost about half the worker throughput (bench/README.md). Flower switches them
# on in running workers when it starts (its enable_events option), so they are there
# whenever someone watches. Set CELERY_WORKER_SEND_TASK_EVENTS=true to force them on.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-send-task-events
CELERY_WORKER_SEND_TASK_EVENTS = env.bool("CELERY_WORKER_SEND_TASK_EVENTS", default=False)
CELERY_TASK_SEND_SENT_EVENT = env.bool("CELERY_WORKER_SEND_TASK_EVENTS", default=False)
# With acks late a worker reserves up to multiplier x concurrency messages and holds
# them unacknowledged, maybe for minutes behind a long task, while idle workers could
# run them. 1 reserves one message per pool process: each waits in Redis, where any
# free worker takes it. Costs one more round trip per task, nothing else here.
# https://docs.celeryq.dev/en/stable/userguide/optimizing.html#prefetch-limits
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-prefetch-multiplier
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# False on purpose: when the broker connection drops, a running task keeps running and
# commits its delivery (the ledger, not the ack, records success); the message that
# Redis hands out again finds it done and is skipped. Cancelling (True) would kill the
# attempt after its claim counted it, wasting an attempt and the work on a broker blip.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-cancel-long-running-tasks-on-connection-loss
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-hijack-root-logger
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_DEFAULT_QUEUE = "events"
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#beat-schedule
CELERY_BEAT_SCHEDULE = {
    "relay-outbox": {
        "task": "events.relay_outbox",
        "schedule": EVENTS_RELAY_INTERVAL_SECONDS,
        "options": {"queue": "events", "expires": 30},
    },
    # Retention (housekeeping/tasks.py), daily at a quiet hour; EVENTS_RETENTION_DAYS=0 skips.
    "prune-events": {
        "task": "events.prune_events",
        "schedule": crontab(minute=17, hour=3),
        "options": {"queue": "events", "expires": 3600},
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
