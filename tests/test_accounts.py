"""Accounts: password rules, lock-out after repeated failures, only the auth pages that
work, and API tokens that only their owner (or a superuser) can mint."""

from __future__ import annotations

import re

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from uploads.models import ApiToken
from uploads.tokens import hash_key, user_for_token

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery"
LOGIN = "/accounts/login/"
ADMIN_LOGIN = "/admin/login/"


def sign_in(client: Client, username: str, password: str, *, url: str = LOGIN, ip: str = "") -> int:
    """POST the sign-in form; the status (302 when signed in)."""
    extra = {"REMOTE_ADDR": ip} if ip else {}
    return client.post(url, {"username": username, "password": password}, **extra).status_code


def has_session(client: Client) -> bool:
    """Whether ``client`` is signed in."""
    return "_auth_user_id" in client.session


# ------------------------------------------------------------------------------
# Passwords
# ------------------------------------------------------------------------------
@pytest.mark.parametrize("weak", ["1", "password", "alice", "12345678901"])
def test_a_weak_new_password_is_refused(client, user, weak):
    client.force_login(user)

    response = client.post(
        "/accounts/password_change/",
        {"old_password": PASSWORD, "new_password1": weak, "new_password2": weak},
    )

    assert response.status_code == 200  # the form again, with the reason
    user.refresh_from_db()
    assert user.check_password(PASSWORD)


def test_a_strong_new_password_is_accepted(client, user):
    client.force_login(user)
    new = "a heron stood in the reeds at dawn"

    response = client.post(
        "/accounts/password_change/",
        {"old_password": PASSWORD, "new_password1": new, "new_password2": new},
    )

    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password(new)


# ------------------------------------------------------------------------------
# Lock-out
# ------------------------------------------------------------------------------
def test_repeated_wrong_passwords_lock_the_user_out_even_with_the_right_one(client, user, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert sign_in(client, "alice", "wrong") == 200
    # the last allowed failure already answers with the lock-out page
    assert sign_in(client, "alice", "wrong") == 429

    response = client.post(LOGIN, {"username": "alice", "password": PASSWORD})

    assert response.status_code == 429
    assert "Too many failed sign-in attempts" in response.content.decode()
    assert not has_session(client)


def test_lock_out_is_per_user_across_addresses(user, settings):
    for n in range(settings.AXES_FAILURE_LIMIT):
        sign_in(Client(), "alice", "wrong", ip=f"198.51.100.{n + 1}")

    fresh = Client()
    assert sign_in(fresh, "alice", PASSWORD, ip="203.0.113.9") == 429
    assert not has_session(fresh)


def test_lock_out_is_per_address_across_users(user, other_user, settings):
    client = Client()
    for n in range(settings.AXES_FAILURE_LIMIT):
        sign_in(client, f"guess{n}", "wrong", ip="198.51.100.7")

    assert sign_in(client, "bob", PASSWORD, ip="198.51.100.7") == 429
    assert not has_session(client)
    # and another address is not affected
    assert sign_in(Client(), "bob", PASSWORD, ip="203.0.113.9") == 302


def test_admin_sign_in_is_locked_out_too(admin_user, settings):
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        sign_in(client, "admin", "wrong", url=ADMIN_LOGIN)

    assert sign_in(client, "admin", "password", url=ADMIN_LOGIN) == 429


def test_an_admin_unlocks_a_user_by_deleting_the_attempts(admin_client, user, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        sign_in(Client(), "alice", "wrong")
    attempts = list(AccessAttempt.objects.values_list("pk", flat=True))
    assert attempts

    admin_client.post(
        reverse("admin:axes_accessattempt_changelist"),
        {"action": "delete_selected", "_selected_action": attempts, "post": "yes"},
    )

    assert sign_in(Client(), "alice", PASSWORD) == 302


def test_the_reset_command_unlocks_a_user(user, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        sign_in(Client(), "alice", "wrong")

    call_command("axes_reset_username", "alice", verbosity=0)

    assert sign_in(Client(), "alice", PASSWORD) == 302


# ------------------------------------------------------------------------------
# Only the auth pages that have a working flow
# ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "/accounts/password_reset/",
        "/accounts/password_reset/done/",
        "/accounts/reset/MQ/set-password/",
        "/accounts/reset/done/",
    ],
)
def test_password_reset_pages_do_not_exist(client, url):
    assert client.get(url).status_code == 404


# ------------------------------------------------------------------------------
# API tokens in admin
# ------------------------------------------------------------------------------
@pytest.fixture
def token_clerk(db: None) -> User:
    """Staff who may only view and add API tokens."""
    clerk = User.objects.create_user("clerk", "clerk@example.com", PASSWORD, is_staff=True)
    clerk.user_permissions.add(
        *Permission.objects.filter(codename__in=["add_apitoken", "view_apitoken"])
    )
    return clerk


def test_staff_cannot_mint_a_token_for_a_superuser(token_clerk):
    root = User.objects.create_superuser("root", "root@example.com", PASSWORD)
    client = Client()
    client.force_login(token_clerk)

    response = client.post(reverse("admin:uploads_apitoken_add"), {"user": root.pk, "name": "x"})

    assert response.status_code in (200, 403)
    assert not ApiToken.objects.filter(user=root).exists()


def test_staff_may_mint_their_own_token_and_see_it_in_the_response(token_clerk):
    client = Client()
    client.force_login(token_clerk)

    response = client.post(
        reverse("admin:uploads_apitoken_add"), {"user": token_clerk.pk, "name": "mine"}
    )

    assert response.status_code == 200
    raw = re.search(r"upl_[A-Za-z0-9_-]{43}", response.content.decode()).group()
    assert user_for_token(raw) == token_clerk
    assert ApiToken.objects.get(user=token_clerk).key_hash == hash_key(raw)
    # shown in this response only: not in the (signed, not encrypted) messages cookie
    assert all(raw not in morsel.value for morsel in response.cookies.values())
    assert "no-store" in response["Cache-Control"]


def test_a_superuser_may_mint_a_token_for_anyone(admin_client, user):
    response = admin_client.post(
        reverse("admin:uploads_apitoken_add"), {"user": user.pk, "name": "for alice"}
    )

    raw = re.search(r"upl_[A-Za-z0-9_-]{43}", response.content.decode()).group()
    assert user_for_token(raw) == user
