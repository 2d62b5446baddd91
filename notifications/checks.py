"""The claim timeout must outlast an attempt, or two attempts could send the same mail."""

from __future__ import annotations

from typing import Any

from django.core import checks


@checks.register()
def check_claim_timeout(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``NOTIFICATIONS_CLAIM_TIMEOUT_SECONDS`` must be at least the consumer's time limit.

    A claim younger than the timeout is respected; an older one is taken over as the
    claim of a crashed attempt. Only after the hard time limit is an attempt surely gone.
    """
    from django.conf import settings

    from events.registry import get_consumer
    from notifications.services import claim_timeout

    try:
        consumer = get_consumer("notifications")
    except LookupError:
        return []
    limit = consumer.time_limit or getattr(settings, "CELERY_TASK_TIME_LIMIT", None)
    timeout = claim_timeout().total_seconds()
    if limit and timeout < limit:
        return [
            checks.Error(
                f"NOTIFICATIONS_CLAIM_TIMEOUT_SECONDS ({timeout:g} s) must be at least the "
                f"notifications consumer's time limit ({limit:g} s): a claim would be taken "
                "over while the attempt holding it may still be sending, and the mail sent twice",
                id="notifications.E001",
            )
        ]
    return []
