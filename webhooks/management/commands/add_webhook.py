"""``add_webhook USERNAME URL [--type TYPE]...``: register an endpoint, print its secret last."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from webhooks.services import EVENT_TYPES, EndpointRefused, add_endpoint


class Command(BaseCommand):
    help = (
        "Register a webhook endpoint for USERNAME's upload events and print its signing "
        "secret (whsec_...) alone on the last line. --type limits it to some event types "
        f"({', '.join(EVENT_TYPES)}); by default it receives all."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("url")
        parser.add_argument(
            "--type",
            action="append",
            dest="types",
            default=[],
            choices=EVENT_TYPES,
            metavar="TYPE",
            help=f"an event type to send ({', '.join(EVENT_TYPES)}); repeatable",
        )

    def handle(self, *args: object, **options: Any) -> None:
        user_model = get_user_model()
        try:
            owner = user_model.objects.get(**{user_model.USERNAME_FIELD: options["username"]})
        except user_model.DoesNotExist:
            raise CommandError(f"no user {options['username']!r}") from None
        try:
            endpoint = add_endpoint(owner=owner, url=options["url"], event_types=options["types"])
        except EndpointRefused as exc:
            raise CommandError(f"endpoint refused: {exc}") from None
        types = ", ".join(endpoint.event_types) or "all event types"
        self.stdout.write(f"{endpoint} for {owner}: {types}")
        self.stdout.write("signing secret (shown once, keep it with the receiver):")
        self.stdout.write(endpoint.secret)
