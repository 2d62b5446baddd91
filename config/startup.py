"""Processes started with ``celery -A config`` that refuse an unsafe configuration.

Connected on import; ``config/celery.py`` imports this module:

- a worker refuses to start on a configuration that would duplicate or lose work (the
  rules are ``config.checks``);
- Flower refuses to start without basic auth.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery.signals import import_modules, worker_init

from config import correlation
from config.checks import current_delivery_config, delivery_config_problems

logger = logging.getLogger(__name__)


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
    problems = delivery_config_problems(current_delivery_config(getattr(sender, "app", None)))
    if problems:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise SystemExit(
            f"celery worker refused to start: the configuration would duplicate or lose work:\n"
            f"{lines}"
        )


# ------------------------------------------------------------------------------
# Flower
# ------------------------------------------------------------------------------
# Long enough that guessing it over HTTP is hopeless (bin/start generates 16 characters).
FLOWER_MIN_PASSWORD_LENGTH = 12
# What example files put where a password goes: .env.example has ``operator:change-me``.
FLOWER_PLACEHOLDER_MARK = "change-me"


def flower_auth_problem(*, basic_auth: Sequence[str]) -> str | None:
    """Why Flower must not start with these credentials (one line), or ``None`` when it may.

    Credentials are required whatever ``DJANGO_DEBUG`` says: a debug run is still reachable
    by whoever can reach its port, and ``celery -A config flower`` binds every interface.
    A placeholder copied from ``.env.example`` or a short password is no credential.
    Flower reads ``FLOWER_BASIC_AUTH`` from the environment itself; it is deliberately not
    a Django setting, since Celery's configuration dump (Flower's worker page) lists every
    Django setting and does not mask this one.
    """
    valid = [entry for entry in basic_auth if _is_user_password(entry)]
    if len(valid) != len(basic_auth):
        return "FLOWER_BASIC_AUTH must be user:password (comma-separated for several users)"
    if not valid:
        return (
            "FLOWER_BASIC_AUTH (user:password) is required: "
            "Flower shows every task and can revoke them and shut workers down"
        )
    for entry in valid:
        user, _, password = entry.partition(":")
        if FLOWER_PLACEHOLDER_MARK in password.lower():
            return (
                f"FLOWER_BASIC_AUTH holds a placeholder password for user {user!r} "
                f"(it contains {FLOWER_PLACEHOLDER_MARK!r}): set a real one"
            )
        if len(password) < FLOWER_MIN_PASSWORD_LENGTH:
            return (
                f"FLOWER_BASIC_AUTH password for user {user!r} is shorter than "
                f"{FLOWER_MIN_PASSWORD_LENGTH} characters"
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
    from tornado.options import options

    problem = flower_auth_problem(basic_auth=options.basic_auth or [])
    if problem:
        raise SystemExit(f"flower refused to start: {problem}")
    protect_flower_metrics()


def protect_flower_metrics() -> None:
    """Put Flower's own ``/metrics`` behind its basic auth, like every other page.

    Flower 2.2 serves ``/metrics`` to anyone (flower#1342): task names, worker names and
    counts. Wrapping the handler with tornado's ``authenticated`` runs Flower's own
    credential check (``BaseHandler.get_current_user``), so a scrape needs the same
    ``user:password`` as a person (Prometheus: ``basic_auth`` in the scrape config).
    """
    import tornado.web
    from flower.views.monitor import Metrics

    if not getattr(Metrics.get, "requires_flower_auth", False):
        Metrics.get = tornado.web.authenticated(Metrics.get)
        Metrics.get.requires_flower_auth = True
