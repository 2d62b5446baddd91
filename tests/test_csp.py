"""A Content-Security-Policy on every HTML page: scripts and styles from the site only.

django-csp is not installed, so config.middleware.ContentSecurityPolicyMiddleware sets
the header on HTML responses that have none; downloads keep their own sandbox policy.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.factories import upload_text

pytestmark = pytest.mark.django_db

SITE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)


def directives(policy: str) -> dict[str, list[str]]:
    parsed = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            parsed[words[0]] = words[1:]
    return parsed


@pytest.fixture
def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def site_pages(user) -> list[str]:
    upload = upload_text(user, "a page with a file", name="notes.txt")
    return [
        "/",
        "/uploads/new/",
        f"/uploads/{upload.pk}/",
        f"/uploads/{upload.pk}/delete/",
        "/search/?q=file",
        "/webhooks/",
    ]


def test_every_site_page_carries_the_policy(signed_in, user):
    for url in site_pages(user):
        response = signed_in.get(url)
        assert response.status_code == 200, url
        assert response["Content-Security-Policy"] == SITE_CSP, url


def test_sign_in_and_error_pages_carry_it_too(client):
    assert client.get("/accounts/login/")["Content-Security-Policy"] == SITE_CSP
    assert client.get("/no-such-page/")["Content-Security-Policy"] == SITE_CSP


def test_site_pages_hold_no_inline_script_style_or_handler(signed_in, user):
    inline = re.compile(
        r"<script(?![^>]*\bsrc=)[^>]*>|<style\b|\sstyle=|\son[a-z]+=", re.IGNORECASE
    )
    for url in [*site_pages(user), "/accounts/login/"]:
        html = signed_in.get(url).content.decode()
        assert inline.findall(html) == [], url


def test_a_download_keeps_its_sandbox_policy(signed_in, user):
    upload = upload_text(user, "<script>alert(1)</script>", name="x.html")
    download = signed_in.get(f"/uploads/{upload.pk}/download/")
    assert download["Content-Security-Policy"] == "default-src 'none'; sandbox"


def test_json_answers_get_no_page_policy(signed_in):
    assert "Content-Security-Policy" not in signed_in.get("/uploads/states/")


def test_the_admin_runs_scripts_from_the_site_only():
    root = User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(root)

    policy = directives(client.get("/admin/uploads/upload/")["Content-Security-Policy"])

    assert policy["script-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]
