"""``create_api_token USERNAME``: make an API token and print it alone on one line."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from uploads.models import ApiToken
from uploads.tokens import create_api_token


class Command(BaseCommand):
    help = (
        "Create an API token for a user and print it alone on one line. Only its hash is "
        "stored: copy it now, it cannot be shown again."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", metavar="USERNAME", help="whose token it is")
        parser.add_argument("--name", default="", help="a label, e.g. what the token is for")

    def handle(self, *args: object, username: str, name: str, **options: object) -> None:
        max_name = ApiToken._meta.get_field("name").max_length
        if len(name) > max_name:
            raise CommandError(f"--name is longer than {max_name} characters")
        user_model = get_user_model()
        try:
            user = user_model.objects.get(**{user_model.USERNAME_FIELD: username})
        except user_model.DoesNotExist:
            raise CommandError(f"unknown user {username!r}") from None
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive; its tokens would not work")
        _token, raw = create_api_token(user, name=name)
        self.stdout.write(raw)
