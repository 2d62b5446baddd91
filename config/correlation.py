"""The correlation id: one id per request, command or task chain, followed across processes.

A web request takes it from a sane ``X-Request-ID`` header or makes one
(``config.middleware``); a management command gets one for its whole process; a worker
takes it from the task's ``x_correlation_id`` header (``config.celery_signals``). It is stored
on each event (``Event.correlation_id``), sent with every consumer task, and added to
every log line (``config.logging``), so one upload can be followed from the request
through every consumer.

It lives in a ``ContextVar``, so concurrent requests in threads never see each other's.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

# The HTTP header a client or proxy may send, and that every response echoes.
HTTP_HEADER = "X-Request-ID"
# The Celery message header. Not ``correlation_id``: Celery overwrites that name on the
# worker with the AMQP property of the same name, which holds the task id.
TASK_HEADER = "x_correlation_id"
# Event.correlation_id is 64 characters; ids from outside must also be safe in logs.
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,63}")

_current: ContextVar[str] = ContextVar("correlation_id", default="")
_task: ContextVar[tuple[str, str]] = ContextVar("celery_task", default=("", ""))

# One id for a whole process that has no request or task of its own (a management
# command), made on first use; regenerated in a forked child.
_process_id = ""
_process_default_enabled = True


def new_correlation_id() -> str:
    """A fresh id: 32 hex characters."""
    return uuid.uuid4().hex


def sanitize(value: str | None) -> str | None:
    """``value`` if it is a sane id from outside (1-64 safe characters), else ``None``."""
    if value and _SANE_ID.fullmatch(value):
        return value
    return None


def get_correlation_id() -> str:
    """The current id: the request's or task's, else the process's (commands), else ``""``."""
    value = _current.get()
    if value or not _process_default_enabled:
        return value
    return process_correlation_id()


def explicit_correlation_id() -> str:
    """The id set for this request or task, ignoring the process fallback."""
    return _current.get()


def process_correlation_id() -> str:
    """The id of this process, for work that no request or task started (e.g. a command)."""
    global _process_id
    if not _process_id:
        _process_id = new_correlation_id()
    return _process_id


def disable_process_default() -> None:
    """Use no process-wide id here: a worker's ids come from its tasks, one per task."""
    global _process_default_enabled
    _process_default_enabled = False


def set_correlation_id(value: str) -> Token[str]:
    """Make ``value`` the current id; pass the token to ``reset_correlation_id``."""
    return _current.set(value)


def reset_correlation_id(token: Token[str]) -> None:
    """Restore the id that was current before ``set_correlation_id``."""
    _current.reset(token)


@contextmanager
def correlation_scope(value: str | None = None) -> Iterator[str]:
    """Run the block with ``value`` (or a new id) as the current id; restore it after."""
    value = value or new_correlation_id()
    token = _current.set(value)
    try:
        yield value
    finally:
        _current.reset(token)


def set_current_task(task_id: str, task_name: str) -> Token[tuple[str, str]]:
    """Record the Celery task this worker process is running, for log lines."""
    return _task.set((task_id, task_name))


def reset_current_task(token: Token[tuple[str, str]]) -> None:
    """Forget the task recorded by ``set_current_task``."""
    _task.reset(token)


def current_task() -> tuple[str, str]:
    """``(task_id, task_name)`` of the running task, or ``("", "")`` outside a task."""
    return _task.get()


def task_headers(correlation_id: str) -> dict[str, str]:
    """The Celery message headers that carry ``correlation_id`` to a worker."""
    return {TASK_HEADER: correlation_id} if correlation_id else {}


def _forget_process_id_after_fork() -> None:
    global _process_id
    _process_id = ""


os.register_at_fork(after_in_child=_forget_process_id_after_fork)
