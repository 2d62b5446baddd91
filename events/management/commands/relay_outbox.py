"""``relay_outbox [--once]``: publish what the outbox still holds."""

from __future__ import annotations

import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from events.relay import relay_outbox


class Command(BaseCommand):
    help = (
        "Publish deliveries whose message is lost (never sent, lease expired, broker data lost). "
        "Runs until stopped, "
        "every EVENTS_RELAY_INTERVAL_SECONDS; --once makes one pass and exits."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="make one pass and exit")
        parser.add_argument(
            "--interval",
            type=float,
            default=None,
            help="seconds between passes when running continuously (default: the beat interval)",
        )

    def handle(self, *args: object, once: bool, interval: float | None, **options: object) -> None:
        interval = interval or settings.CELERY_BEAT_SCHEDULE["relay-outbox"]["schedule"]
        if interval <= 0:
            raise CommandError("--interval must be positive")
        while True:
            result = relay_outbox()
            message = f"published {result.published} deliveries"
            if result.broker_failed:
                message += "; the broker is unreachable, the rest stay in the outbox"
            self.stdout.write(message)
            if once:
                if result.broker_failed:
                    raise CommandError("broker unreachable")
                return
            time.sleep(interval)
