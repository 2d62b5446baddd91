"""Configuration that would duplicate or lose work, refused before a worker starts.

``delivery_config_problems`` is pure: it takes the numbers and flags and returns what is
wrong, one sentence each. ``current_delivery_config`` reads them from the Celery app,
Django settings and the consumer registry. A starting worker calls both
(``config.startup``) and exits with the problems; ``manage.py check`` (and so ``migrate``
and ``runserver``) reports them too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core import checks

PICKLE_NAMES = frozenset({"pickle", "application/x-python-serialize"})


@dataclass(frozen=True)
class Problem:
    """One rule broken: a stable ``code`` (as in ``manage.py check``) and a sentence."""

    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]"


@dataclass(frozen=True)
class DeliveryConfig:
    """What the delivery guarantees depend on, in seconds where a number is a duration.

    ``consumer_time_limits`` maps each consumer task name to its hard time limit
    (``None``: none of its own, so ``default_time_limit`` applies). ``task_acks`` maps
    task names that override acking to ``(acks_late, reject_on_worker_lost)``.
    """

    visibility_timeout: float
    prefetch_multiplier: int
    lease_margin: float
    default_time_limit: float | None
    consumer_time_limits: Mapping[str, float | None]
    acks_late: bool
    reject_on_worker_lost: bool
    task_acks: Mapping[str, tuple[bool, bool]] = field(default_factory=dict)
    serializers: Mapping[str, str] = field(default_factory=dict)
    accept_content: Sequence[str] = ("json",)
    result_accept_content: Sequence[str] | None = None
    # PostgreSQL's idle_in_transaction_session_timeout, when set (None: SQLite, or 0: off).
    idle_in_transaction_timeout: float | None = None


def delivery_config_problems(config: DeliveryConfig) -> list[Problem]:
    """Every rule ``config`` breaks; empty when a worker may start."""
    problems: list[Problem] = []
    limits = _effective_limits(config)

    unbounded = sorted(name for name, limit in limits.items() if not limit)
    if unbounded:
        problems.append(
            Problem(
                "events.E001",
                f"no time limit for {', '.join(unbounded)}: a hung task would hold its message "
                "unacknowledged for ever (set CELERY_TASK_TIME_LIMIT and each consumer's "
                "time_limit)",
            )
        )

    # With acks_late a message stays unacknowledged from the moment a worker takes it
    # until its task ends. No message carries a delay (retries wait in the ledger), so
    # that is: waiting behind the other messages its process reserved (prefetch
    # multiplier - 1 tasks), its own run, and the pool replacing a killed process (the
    # lease margin). Past the visibility timeout Redis hands it out again.
    longest_name, longest = _longest(limits, config.default_time_limit)
    held = config.prefetch_multiplier * longest + config.lease_margin
    if config.visibility_timeout <= held:
        problems.append(
            Problem(
                "events.E002",
                f"the broker visibility timeout ({_s(config.visibility_timeout)}) must exceed "
                f"CELERY_WORKER_PREFETCH_MULTIPLIER ({config.prefetch_multiplier}) times the "
                f"longest task time limit ({_s(longest)}, {longest_name}) plus "
                f"EVENTS_LEASE_MARGIN_SECONDS ({_s(config.lease_margin)}) = {_s(held)}: Redis "
                "would hand a message that is still waiting or running to a second worker "
                "(raise CELERY_VISIBILITY_TIMEOUT)",
            )
        )

    late_without_reject = [
        name
        for name, (acks_late, reject) in {
            "CELERY_TASK_ACKS_LATE": (
                config.acks_late,
                config.reject_on_worker_lost,
            ),
            **config.task_acks,
        }.items()
        if acks_late and not reject
    ]
    if late_without_reject:
        problems.append(
            Problem(
                "events.E003",
                f"acks late without reject on worker lost for {', '.join(late_without_reject)}: "
                "a task whose pool process dies would be acknowledged and lost "
                "(set CELERY_TASK_REJECT_ON_WORKER_LOST = True)",
            )
        )

    pickled = sorted(name for name, value in config.serializers.items() if _is_pickle(value))
    accepted = {
        "CELERY_ACCEPT_CONTENT": config.accept_content,
        "CELERY_RESULT_ACCEPT_CONTENT": config.result_accept_content or (),
    }
    pickled += sorted(name for name, values in accepted.items() if any(map(_is_pickle, values)))
    if pickled:
        problems.append(
            Problem(
                "events.E004",
                f"pickle is allowed by {', '.join(pickled)}: a message could run code in a "
                "worker; use json only",
            )
        )

    # A claim's lease ends at the hard time limit plus this margin. Without a margin the
    # relay could send a delivery again while the pool still tears the killed attempt
    # down, and a second attempt would overlap the first.
    if config.lease_margin <= 0:
        problems.append(
            Problem(
                "events.E005",
                f"EVENTS_LEASE_MARGIN_SECONDS ({_s(config.lease_margin)}) must be positive: a "
                "lease must outlast the hard time limit of the attempt that holds it",
            )
        )

    # The server ends a session idle inside a transaction this long. An attempt's
    # transaction is never idle past its hard time limit (the pool kills it there), so a
    # timeout above the longest limit plus the margin only ever ends a silent client's.
    idle = config.idle_in_transaction_timeout
    attempt = longest + config.lease_margin
    if idle and idle <= attempt:
        problems.append(
            Problem(
                "events.E006",
                f"DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS ({_s(idle)}) must exceed the "
                f"longest task time limit ({_s(longest)}, {longest_name}) plus "
                f"EVENTS_LEASE_MARGIN_SECONDS ({_s(config.lease_margin)}) = {_s(attempt)}: "
                "PostgreSQL would end an attempt that is still running (or set it to 0, off)",
            )
        )
    return problems


def current_delivery_config(app: Any = None) -> DeliveryConfig:
    """The configuration in force: Celery app ``app`` (default: the current one), settings, registry."""
    from celery import current_app
    from django.conf import settings

    from events.registry import all_consumers

    app = app or current_app
    conf = app.conf
    consumers = all_consumers()
    task_acks = {}
    for consumer in consumers:
        task = app.tasks.get(consumer.task_name)
        if task is not None:
            task_acks[consumer.task_name] = (
                bool(task.acks_late),
                bool(task.reject_on_worker_lost),
            )
    transport_options = conf.broker_transport_options or {}
    return DeliveryConfig(
        # kombu's Redis transport default, when the option is not set.
        visibility_timeout=float(transport_options.get("visibility_timeout", 3600)),
        prefetch_multiplier=max(1, int(conf.worker_prefetch_multiplier or 1)),
        lease_margin=float(settings.EVENTS_LEASE_MARGIN_SECONDS),
        default_time_limit=conf.task_time_limit,
        consumer_time_limits={c.task_name: c.time_limit for c in consumers},
        acks_late=bool(conf.task_acks_late),
        reject_on_worker_lost=bool(conf.task_reject_on_worker_lost),
        task_acks=task_acks,
        serializers={
            "CELERY_TASK_SERIALIZER": conf.task_serializer,
            "CELERY_RESULT_SERIALIZER": conf.result_serializer,
            "CELERY_EVENT_SERIALIZER": conf.event_serializer,
        },
        accept_content=tuple(conf.accept_content or ()),
        result_accept_content=tuple(conf.result_accept_content or ()) or None,
        idle_in_transaction_timeout=(
            float(settings.DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS)
            if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
            else None
        ),
    )


def check_delivery_config(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Django system check: the same rules a worker enforces at startup."""
    return [
        checks.Error(problem.message, id=problem.code)
        for problem in delivery_config_problems(current_delivery_config())
    ]


def _effective_limits(config: DeliveryConfig) -> dict[str, float | None]:
    limits: dict[str, float | None] = {
        name: limit or config.default_time_limit
        for name, limit in config.consumer_time_limits.items()
    }
    limits["CELERY_TASK_TIME_LIMIT"] = config.default_time_limit
    return limits


def _longest(limits: Mapping[str, float | None], default: float | None) -> tuple[str, float]:
    name, limit = max(limits.items(), key=lambda item: item[1] or 0, default=("none", default))
    return name, float(limit or 0)


def _is_pickle(value: str | None) -> bool:
    return (value or "").lower() in PICKLE_NAMES


def _s(seconds: float) -> str:
    return f"{seconds:g} s"


# ------------------------------------------------------------------------------
# Media storage (config/settings/storage.py)
# ------------------------------------------------------------------------------
MEDIA_STORAGES = ("filesystem", "s3")


def storage_config_problem(*, media_storage: str, bucket: str, endpoint_url: str) -> str | None:
    """What makes this media storage configuration unusable, in one sentence naming the
    setting; ``None`` when it can work.

    S3 needs an endpoint as well as a bucket: without ``AWS_S3_ENDPOINT_URL`` boto3
    would quietly talk to Amazon's own endpoint, which is never what a self-hosted
    store (or a test) meant.
    """
    if media_storage not in MEDIA_STORAGES:
        return (
            f"MEDIA_STORAGE={media_storage!r} is not one of {', '.join(MEDIA_STORAGES)} "
            "(filesystem: files under MEDIA_ROOT; s3: an S3-compatible bucket)"
        )
    if media_storage != "s3":
        return None
    if not bucket.strip():
        return "MEDIA_STORAGE=s3 needs AWS_STORAGE_BUCKET_NAME (the bucket files are kept in)"
    if not endpoint_url.strip():
        return (
            "MEDIA_STORAGE=s3 needs AWS_S3_ENDPOINT_URL (the S3 server's URL, "
            "e.g. https://s3.example.com or http://seaweedfs:8333)"
        )
    if not endpoint_url.startswith(("http://", "https://")):
        return f"AWS_S3_ENDPOINT_URL={endpoint_url!r} must start with http:// or https://"
    return None
