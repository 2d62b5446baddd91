"""API tokens: making, checking and revoking them. Only a SHA-256 of each key is stored.

A key is ``upl_`` followed by 43 URL-safe characters (256 random bits). Its first
8 characters are kept in clear as ``key_prefix`` so a person can tell tokens apart in
admin; the lookup goes by that prefix and then compares hashes with
``hmac.compare_digest``. A plain SHA-256 (no salt, no slow hash) is enough because the
key is random and long: there is no password to guess.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import Q
from django.utils import timezone

from uploads.models import ApiToken

KEY_PREFIX = "upl_"
PREFIX_LENGTH = 8
# A longer "key" is not one of ours; don't hash megabytes a client sent as a header.
MAX_KEY_LENGTH = 128
# last_used_at is a hint for people, not a log: one write a minute per token at most,
# so a busy client does not turn every API read into a database write.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_key(raw: str) -> str:
    """The SHA-256 hex digest stored for the key ``raw``."""
    return hashlib.sha256(raw.encode()).hexdigest()


def issue_key(token: ApiToken) -> str:
    """Give the unsaved ``token`` a fresh key and return the raw key, which is not stored."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    token.key_prefix = raw[:PREFIX_LENGTH]
    token.key_hash = hash_key(raw)
    return raw


def create_api_token(user: AbstractBaseUser, name: str = "") -> tuple[ApiToken, str]:
    """Create a token for ``user``; returns it and its raw key (shown once, never again)."""
    token = ApiToken(user=user, name=name)
    raw = issue_key(token)
    token.save()
    return token, raw


def revoke_api_token(token: ApiToken) -> None:
    """Stop ``token`` from authenticating; the row stays so admin shows when and whose."""
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])


def user_for_token(raw: str | None) -> AbstractBaseUser | None:
    """The active user whose live token ``raw`` is, or ``None``.

    Marks the token used (``last_used_at``), at most once a minute.
    """
    if not raw or not raw.startswith(KEY_PREFIX) or len(raw) > MAX_KEY_LENGTH:
        return None
    digest = hash_key(raw)
    candidates = ApiToken.objects.filter(
        key_prefix=raw[:PREFIX_LENGTH], revoked_at__isnull=True
    ).select_related("user")
    token = next((t for t in candidates if hmac.compare_digest(t.key_hash, digest)), None)
    if token is None or not token.user.is_active:
        return None
    _mark_used(token)
    return token.user


def _mark_used(token: ApiToken) -> None:
    now = timezone.now()
    if token.last_used_at is not None and now - token.last_used_at < LAST_USED_RESOLUTION:
        return
    # A conditional UPDATE, so concurrent requests with the same token write once.
    ApiToken.objects.filter(pk=token.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
    ).update(last_used_at=now)
    token.last_used_at = now
