"""Uploaded files. The stored file name is random; the original name is metadata."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


def random_storage_name(instance: Upload, filename: str) -> str:
    """A path that reveals nothing of the original name and never collides."""
    return f"uploads/{timezone.now():%Y/%m}/{uuid.uuid4().hex}"


class Upload(models.Model):
    """A file a user uploaded."""

    # PROTECT: a cascade would skip delete_upload (stored file, index, file.deleted, mail,
    # audit). A user's uploads are deleted first, each through delete_upload.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="uploads"
    )
    file = models.FileField(upload_to=random_storage_name, max_length=255)
    original_name = models.CharField(max_length=255)
    size = models.PositiveBigIntegerField()
    content_type = models.CharField(max_length=255)
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["owner", "-created_at"], name="upload_owner_created_idx")]

    def __str__(self) -> str:
        return self.original_name


class ApiToken(models.Model):
    """A bearer token for the JSON API. Only a SHA-256 of the key is stored.

    The raw key (``upl_`` + 43 URL-safe characters) is shown once, when the token is
    made (``create_api_token`` command or admin); ``key_prefix`` lets people and admin
    tell tokens apart and narrows the lookup without revealing the secret part.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, blank=True, help_text="What the token is for.")
    key_prefix = models.CharField(max_length=8, db_index=True, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-pk"]
        verbose_name = "API token"

    def __str__(self) -> str:
        label = f" ({self.name})" if self.name else ""
        return f"{self.key_prefix}…{label}"
