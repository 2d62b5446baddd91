"""Celery signal receivers that make every task traceable and treat it like a request.

Connected on import; ``config/celery.py`` imports this module, so they apply whenever a
process runs with ``celery -A config``:

- Celery keeps Django's ``LOGGING`` instead of replacing the root logger;
- a task runs with the correlation id its message carries (``config.correlation``), so
  its log lines say which request or command it serves, and tasks it sends carry it on;
- database connections live across tasks as they do across requests (``CONN_MAX_AGE``,
  ``CONN_HEALTH_CHECKS``), instead of Celery's reconnect per task.
"""

from __future__ import annotations

from contextvars import Token
from typing import Any

from celery import Task
from celery.signals import before_task_publish, setup_logging, task_postrun, task_prerun

from config import correlation


@setup_logging.connect
def use_django_logging(**kwargs: object) -> None:
    """Keep Celery from replacing the root logger: Django's ``LOGGING`` applies."""
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


# ------------------------------------------------------------------------------
# Database connections across tasks
# ------------------------------------------------------------------------------
@task_prerun.connect
@task_postrun.connect
def close_old_database_connections(**kwargs: Any) -> None:
    """Treat each task like a request: drop connections that are too old or broken.

    ``CELERY_DB_REUSE_MAX`` stops Celery from closing them after every task; this applies
    Django's own rules (``CONN_MAX_AGE``, and ``CONN_HEALTH_CHECKS`` re-arming the check
    so a connection the database dropped is replaced before the task uses it).
    """
    from django.db import close_old_connections

    close_old_connections()


# ------------------------------------------------------------------------------
# Correlation ids in tasks
# ------------------------------------------------------------------------------
_task_tokens: dict[str, tuple[Token[str], Token[tuple[str, str]]]] = {}


@task_prerun.connect
def enter_task_context(
    sender: Task | None = None, task_id: str = "", task: Task | None = None, **kwargs: Any
) -> None:
    """Run the task with the correlation id from its message (its own id when it has none)."""
    task = task or sender
    name = getattr(task, "name", "") or ""
    header = task.request.get(correlation.TASK_HEADER) if task is not None else None
    value = correlation.sanitize(header) or task_id or correlation.new_correlation_id()
    _task_tokens[task_id] = (
        correlation.set_correlation_id(value),
        correlation.set_current_task(task_id, name),
    )


@task_postrun.connect
def leave_task_context(task_id: str = "", **kwargs: Any) -> None:
    """Forget the task's correlation id, so the next task's log lines never show it."""
    tokens = _task_tokens.pop(task_id, None)
    if tokens is None:
        return
    try:
        correlation.reset_correlation_id(tokens[0])
        correlation.reset_current_task(tokens[1])
    except ValueError:  # set in another context (should not happen): clear instead
        correlation.set_correlation_id("")
        correlation.set_current_task("", "")


@before_task_publish.connect
def carry_correlation_id(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """A task sent while serving a request or task carries that correlation id on.

    Only an id set for a request or task counts, not a process's own: tasks that beat
    sends each get their task id instead. A header set by the sender wins (the relay
    sends each delivery with its own event's id).
    """
    current = correlation.explicit_correlation_id()
    if current and headers is not None:
        headers.setdefault(correlation.TASK_HEADER, current)
