"""``rotate_webhook_secret ENDPOINT_ID``: a new signing secret, printed alone on the last line."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from webhooks.models import Endpoint
from webhooks.services import rotate_secret, secret_overlap


class Command(BaseCommand):
    help = (
        "Give a webhook endpoint a new signing secret and print it alone on the last line. "
        "The old secret keeps signing (a second signature) for WEBHOOKS_SECRET_OVERLAP_HOURS."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("endpoint_id", type=int)

    def handle(self, *args: object, **options: Any) -> None:
        try:
            endpoint = rotate_secret(endpoint_id=options["endpoint_id"])
        except Endpoint.DoesNotExist:
            raise CommandError(f"no webhook endpoint {options['endpoint_id']}") from None
        hours = secret_overlap().total_seconds() / 3600
        self.stdout.write(
            f"{endpoint}: the old secret still signs until "
            f"{endpoint.previous_secret_expires_at:%Y-%m-%d %H:%M} UTC ({hours:g} h)"
        )
        self.stdout.write("new signing secret (shown once, keep it with the receiver):")
        self.stdout.write(endpoint.secret)
