"""Argument checks that several management commands share."""

from __future__ import annotations

from django.core.management.base import CommandError


def positive_int(option: str, value: object) -> int:
    """``value`` as a whole number of at least 1, or a one-line ``CommandError`` naming ``option``."""
    text = str(value).strip()
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise CommandError(f"{option}: {value!r} is not a positive integer")
    return int(text)
