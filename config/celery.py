"""The Celery app ``config``: ``celery -A config worker -Q indexing``.

Every setting lives in Django settings under the ``CELERY_`` namespace
(see ``config/settings/base.py``), so there is one place to read them. The signal
handlers below make processes started with ``-A config`` safe and traceable:

- a worker refuses to start on a configuration that would duplicate or lose work
  (``events.checks``);
- Flower refuses to start without basic auth;
- a task runs with the correlation id its message carries, so its log lines say which
  request or command it serves, and tasks it sends carry the id on;
- database connections live across tasks as they do across requests (``CONN_MAX_AGE``,
  ``CONN_HEALTH_CHECKS``), instead of Celery's reconnect per task.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from contextvars import Token
from typing import Any

from celery import Celery, Task
from celery.signals import (
    before_task_publish,
    import_modules,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
)

from events import correlation

# Registers the Django system check (``manage.py check``) with the worker's rules.
from events.checks import current_delivery_config, delivery_config_problems

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

logger = logging.getLogger(__name__)


@setup_logging.connect
def use_django_logging(**kwargs: object) -> None:
    """Keep Celery from replacing the root logger: Django's ``LOGGING`` applies."""
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


# ------------------------------------------------------------------------------
# Worker startup
# ------------------------------------------------------------------------------
@worker_init.connect
def refuse_unsafe_configuration(sender: Any = None, **kwargs: Any) -> None:
    """Stop the worker before it takes a message if the configuration is unsafe.

    Celery logs and swallows exceptions from signal handlers; ``SystemExit`` is not one,
    so the worker exits with status 1 and the problems on stderr.
    """
    # A worker's correlation ids come from its tasks, never one for the whole process.
    correlation.disable_process_default()
    options = getattr(sender, "options", None) or {}
    if (
        not getattr(sender, "task_events", False)
        and options.get("without_gossip")
        and options.get("without_heartbeat")
    ):
        # Such a worker has no event dispatcher, so Flower's enable_events cannot reach it.
        logger.warning(
            "this worker sends no events at all (--without-gossip --without-heartbeat, no -E): "
            "Flower will not see its tasks; keep heartbeats on to let Flower switch task "
            "events on when it starts"
        )
    problems = delivery_config_problems(current_delivery_config(app))
    if problems:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise SystemExit(
            f"celery worker refused to start: the configuration would duplicate or lose work:\n"
            f"{lines}"
        )


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


# ------------------------------------------------------------------------------
# Flower
# ------------------------------------------------------------------------------
def flower_auth_problem(*, debug: bool, basic_auth: Sequence[str]) -> str | None:
    """Why Flower must not start with these settings, or ``None`` when it may.

    Credentials are required whatever ``debug`` says: a debug run is still reachable by
    whoever can reach its port, and ``celery -A config flower`` binds every interface.
    """
    valid = [entry for entry in basic_auth if _is_user_password(entry)]
    if len(valid) != len(basic_auth):
        return "FLOWER_BASIC_AUTH must be user:password (comma-separated for several users)"
    if not valid:
        return (
            "FLOWER_BASIC_AUTH (user:password) is required: "
            "Flower shows every task and can revoke them and shut workers down"
        )
    return None


def _is_user_password(entry: str) -> bool:
    user, sep, password = entry.partition(":")
    return bool(user and sep and password)


@import_modules.connect
def require_flower_auth(sender: Any = None, **kwargs: Any) -> None:
    """Refuse to start Flower without basic auth.

    Flower has no hook of its own: it builds its options (command line,
    ``FLOWER_*`` environment, ``flowerconfig.py``) and then, creating its web app, has
    Celery import the task modules, which sends ``import_modules``. The click context
    says which ``celery`` subcommand runs; any other subcommand passes through.
    """
    import click

    context = click.get_current_context(silent=True)
    if context is None or context.command.name != "flower":
        return
    from django.conf import settings
    from tornado.options import options

    problem = flower_auth_problem(debug=settings.DEBUG, basic_auth=options.basic_auth or [])
    if problem:
        raise SystemExit(f"flower refused to start: {problem}")
