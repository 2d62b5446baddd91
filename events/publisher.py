"""A per-process background publisher: the request commits, a thread publishes in batches.

Prototype for issue 17 (``EVENTS_PUBLISH_IN_BACKGROUND``). ``record_event``'s on-commit
callback hands the committed deliveries to this process's publisher thread and returns,
so a request pays for its commit only. The thread takes whatever has queued up since
its last pass (up to ``BATCH``) and publishes it with one producer and one
``mark_published`` pass (``events.outbox.publish_deliveries_now``).

Nothing is lost when the process dies with deliveries still queued here: they are
committed with no message out, and the relay sends them after the publish grace, exactly
as when an on-commit publish fails. At exit the queue is flushed for a bounded time.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
from collections.abc import Sequence

from events.models import Delivery, Event

logger = logging.getLogger(__name__)

BATCH = 500
# How long an exiting process waits for the thread to publish what is queued.
EXIT_FLUSH_SECONDS = 5.0

_lock = threading.Lock()
_queue: queue.SimpleQueue[tuple[Event, Sequence[Delivery]] | None] = queue.SimpleQueue()
_thread: threading.Thread | None = None
_pid = 0


def submit(event: Event, deliveries: Sequence[Delivery]) -> None:
    """Queue ``event``'s committed deliveries for this process's publisher thread."""
    _ensure_thread()
    _queue.put((event, deliveries))


def _ensure_thread() -> None:
    global _thread, _pid, _queue
    if _thread is not None and _pid == os.getpid() and _thread.is_alive():
        return
    with _lock:
        if _thread is not None and _pid == os.getpid() and _thread.is_alive():
            return
        if _pid != os.getpid():
            # A forked child (gunicorn, Celery prefork) inherits no thread: start afresh.
            _queue = queue.SimpleQueue()
        _pid = os.getpid()
        _thread = threading.Thread(target=_run, name="events-publisher", daemon=True)
        _thread.start()
        atexit.register(_flush_at_exit)


def _run() -> None:
    from django.db import connection

    from events.outbox import publish_deliveries_now

    stop = False
    while not stop:
        items = [_queue.get()]
        while len(items) < BATCH:
            try:
                items.append(_queue.get_nowait())
            except queue.Empty:
                break
        if None in items:
            stop = True
        deliveries = []
        for item in items:
            if item is None:
                continue
            event, rows = item
            for delivery in rows:
                delivery.event = event
                deliveries.append(delivery)
        if not deliveries:
            continue
        try:
            publish_deliveries_now(deliveries)
        except Exception:
            logger.exception("publishing %d deliveries failed; the relay will", len(deliveries))
    connection.close()


def _flush_at_exit() -> None:
    if _thread is None or _pid != os.getpid() or not _thread.is_alive():
        return
    _queue.put(None)
    _thread.join(EXIT_FLUSH_SECONDS)
