"""Which address sign-in lock-out counts: REMOTE_ADDR, unless told how many proxies to trust.

Addresses are all loopback ones: 127.0.0.2 plays the proxy, 127.0.0.9 the real client and
127.0.0.66 an address a client made up in ``X-Forwarded-For``.
"""

from __future__ import annotations

import os
import secrets
import sys

import pytest
from axes.helpers import get_client_ip_address
from axes.models import AccessAttempt
from django.test import Client, RequestFactory

from tests.processes import ChildProcesses

PROXY, CLIENT, SPOOFED = "127.0.0.2", "127.0.0.9", "127.0.0.66"


def request_from(remote_addr: str, forwarded_for: str | None = None):
    headers = {"REMOTE_ADDR": remote_addr}
    if forwarded_for is not None:
        headers["HTTP_X_FORWARDED_FOR"] = forwarded_for
    return RequestFactory().post("/accounts/login/", **headers)


def setting_in_child(subprocesses: ChildProcesses, **environment: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "AXES_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.base",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        CELERY_BROKER_URL="redis://127.0.0.1:1/0",
        **environment,
    )
    script = (
        "import django; django.setup()\n"
        "from django.conf import settings\n"
        "print(repr(settings.AXES_IPWARE_PROXY_COUNT))\n"
    )
    result = subprocesses.run([sys.executable, "-c", script], env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_proxy_count_is_read_from_the_environment_and_unset_by_default(subprocesses):
    assert setting_in_child(subprocesses) == "None"
    assert setting_in_child(subprocesses, AXES_IPWARE_PROXY_COUNT="2") == "2"


def test_without_a_proxy_count_forwarded_for_is_ignored(settings):
    settings.AXES_IPWARE_PROXY_COUNT = None
    assert get_client_ip_address(request_from(CLIENT, SPOOFED)) == CLIENT


@pytest.mark.parametrize(
    ("count", "forwarded_for", "expected"),
    [
        # One proxy appends the address it saw; whatever the client sent stays to its left.
        (1, f"{SPOOFED}, {CLIENT}", CLIENT),
        (1, CLIENT, CLIENT),
        # Two proxies: the outer one appended the client, the inner one the outer proxy.
        (2, f"{SPOOFED}, {CLIENT}, {PROXY}", CLIENT),
        # Fewer hops than proxies configured: the header cannot be trusted.
        (2, CLIENT, PROXY),
        (1, None, PROXY),
        (1, "not-an-address", PROXY),
    ],
)
def test_with_a_proxy_count_the_client_is_the_entry_the_proxies_appended(
    settings, count, forwarded_for, expected
):
    settings.AXES_IPWARE_PROXY_COUNT = count
    assert get_client_ip_address(request_from(PROXY, forwarded_for)) == expected


@pytest.mark.django_db
def test_a_made_up_forwarded_for_does_not_move_the_lockout_to_another_address(settings, user):
    settings.AXES_IPWARE_PROXY_COUNT = None
    client = Client(REMOTE_ADDR=CLIENT)

    for n in range(3):
        client.post(
            "/accounts/login/",
            {"username": user.username, "password": "wrong"},
            HTTP_X_FORWARDED_FOR=f"127.0.0.{100 + n}",
        )

    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {CLIENT}
