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

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="uploads"
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
