"""Admin actions need the permission they act with; staff manage only their own tokens.

The walk covers every action of every registered ModelAdmin, the global ones
(``delete_selected``) included, so an action added later without ``permissions=`` fails
here instead of being offered to everyone who can open the list.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission, User
from django.db import models
from django.test import Client, RequestFactory
from django.urls import reverse

from uploads.models import ApiToken
from uploads.tokens import create_api_token

pytestmark = pytest.mark.django_db


def registered_admins() -> list[tuple[type[models.Model], admin.ModelAdmin]]:
    return list(admin.site._registry.items())


def base_actions(model_admin: admin.ModelAdmin) -> list[tuple[Callable[..., Any], str]]:
    """Every action the admin could offer before permissions filter them."""
    return [(func, name) for func, name, _description in model_admin._get_base_actions()]


def staff_with(*codenames: str, username: str = "viewer") -> User:
    staff = User.objects.create_user(username, f"{username}@example.com", "pw", is_staff=True)
    staff.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return User.objects.get(pk=staff.pk)  # a fresh object: no cached permissions


@pytest.fixture
def view_only_staff() -> User:
    """Staff who may view every registered model, and (as in the review) add tokens."""
    codenames = [f"view_{model._meta.model_name}" for model, _ in registered_admins()]
    return staff_with(*codenames, "add_apitoken")


def test_every_admin_action_names_the_permission_it_needs():
    unguarded = [
        f"{model._meta.label}.{name}"
        for model, model_admin in registered_admins()
        for func, name in base_actions(model_admin)
        if not set(getattr(func, "allowed_permissions", ())) - {"view"}
    ]
    assert unguarded == []


def test_a_view_only_staff_user_is_offered_no_action_anywhere(view_only_staff):
    request = RequestFactory().get("/admin/")
    request.user = view_only_staff
    offered = {
        model._meta.label: sorted(model_admin.get_actions(request))
        for model, model_admin in registered_admins()
    }
    assert offered == {label: [] for label in offered}


def test_a_view_only_staff_user_cannot_run_any_action_by_posting_it(
    view_only_staff, user, monkeypatch
):
    token, _raw = create_api_token(user)
    client = Client()
    client.force_login(view_only_staff)
    ran: list[str] = []

    for model, model_admin in registered_admins():
        for func, name in base_actions(model_admin):
            label = f"{model._meta.label}.{name}"

            # A spy that keeps the action's declared permissions (functools.wraps copies them).
            def spy(*args: Any, _label: str = label, **kwargs: Any) -> None:
                ran.append(_label)

            wrapped = functools.wraps(func)(spy)
            if hasattr(type(model_admin), name):
                monkeypatch.setattr(type(model_admin), name, wrapped)
            else:
                monkeypatch.setitem(admin.site._actions, name, wrapped)
            first = model._default_manager.order_by("pk").values_list("pk", flat=True).first()
            url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
            response = client.post(
                url, {"action": name, ACTION_CHECKBOX_NAME: [first or 1], "index": 0}
            )
            assert response.status_code in (200, 302, 403), label

    assert ran == []
    token.refresh_from_db()
    assert token.revoked_at is None


def test_view_and_add_token_staff_cannot_revoke_the_superusers_token(view_only_staff):
    root = User.objects.create_superuser("root", "root@example.com", "pw")
    token, _raw = create_api_token(root)
    client = Client()
    client.force_login(view_only_staff)

    client.post(
        reverse("admin:uploads_apitoken_changelist"),
        {"action": "revoke_tokens", ACTION_CHECKBOX_NAME: [token.pk]},
    )

    token.refresh_from_db()
    assert token.revoked_at is None


def test_token_staff_see_and_revoke_only_their_own_tokens(user):
    staff = staff_with("view_apitoken", "change_apitoken", "add_apitoken", username="ops")
    own, _ = create_api_token(staff)
    theirs, _ = create_api_token(user)
    client = Client()
    client.force_login(staff)
    changelist = reverse("admin:uploads_apitoken_changelist")

    listing = client.get(changelist).content.decode()
    assert own.key_prefix in listing
    assert theirs.key_prefix not in listing
    other_page = client.get(reverse("admin:uploads_apitoken_change", args=[theirs.pk]))
    assert other_page.status_code in (302, 404)

    client.post(changelist, {"action": "revoke_tokens", ACTION_CHECKBOX_NAME: [own.pk, theirs.pk]})

    own.refresh_from_db()
    theirs.refresh_from_db()
    assert own.revoked_at is not None
    assert theirs.revoked_at is None


def test_a_superuser_still_sees_and_revokes_every_token(user):
    root = User.objects.create_superuser("root", "root@example.com", "pw")
    theirs, _ = create_api_token(user)
    client = Client()
    client.force_login(root)

    client.post(
        reverse("admin:uploads_apitoken_changelist"),
        {"action": "revoke_tokens", ACTION_CHECKBOX_NAME: [theirs.pk]},
    )

    theirs.refresh_from_db()
    assert theirs.revoked_at is not None
    assert ApiToken.objects.filter(revoked_at__isnull=True).count() == 0
