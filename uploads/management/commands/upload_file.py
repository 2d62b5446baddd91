"""``upload_file PATH... --owner USERNAME``: upload files through the web's service."""

from __future__ import annotations

from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.files import File
from django.core.management.base import BaseCommand, CommandError, CommandParser

from uploads.exceptions import UploadRejected
from uploads.services import check_upload_size, create_upload


class Command(BaseCommand):
    help = "Upload one or more files for a user, exactly as the web form does."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("paths", nargs="+", metavar="PATH", help="files to upload")
        parser.add_argument("--owner", required=True, metavar="USERNAME", help="who owns them")

    def handle(self, *args: object, paths: list[str], owner: str, **options: object) -> None:
        user_model = get_user_model()
        try:
            user = user_model.objects.get(**{user_model.USERNAME_FIELD: owner})
        except user_model.DoesNotExist:
            raise CommandError(f"unknown owner {owner!r}") from None

        # Check every file first, so one bad path stores nothing at all.
        files = [self._checked(Path(raw)) for raw in paths]
        for path in files:
            with path.open("rb") as handle:
                try:
                    upload = create_upload(owner=user, file=File(handle, name=path.name))
                except UploadRejected as exc:
                    raise CommandError(f"{path}: {exc.message}") from None
            self.stdout.write(f"{path}: upload {upload.pk} ({upload.size} bytes)")

    @staticmethod
    def _checked(path: Path) -> Path:
        if not path.exists():
            raise CommandError(f"{path}: no such file")
        if path.is_dir():
            raise CommandError(f"{path}: is a directory")
        if not path.is_file():
            raise CommandError(f"{path}: not a regular file")
        try:
            check_upload_size(path.stat().st_size)
        except UploadRejected as exc:
            raise CommandError(f"{path}: {exc.message}") from None
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise CommandError(f"{path}: cannot be read ({exc.strerror})") from None
        return path
