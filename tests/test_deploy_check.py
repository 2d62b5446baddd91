"""`manage.py check --deploy` is clean when production settings come from the environment."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable

import pytest
from django.core.management import call_command

from tests.processes import ChildProcesses

# Settings the environment of a developer or CI run might carry into the subprocess.
_INHERITED = ("DJANGO_", "TEST_", "EVENTS_TEST_")


@pytest.fixture
def run_deploy_check(
    subprocesses: ChildProcesses,
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_deploy_check(**settings)``: ``manage.py check --deploy`` in a child process."""

    def run(**overrides: str) -> subprocess.CompletedProcess[str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(_INHERITED)}
        env.update(DJANGO_SETTINGS_MODULE="config.settings.base", **overrides)
        return subprocesses.run(
            [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
            env=env,
            timeout=120,
        )

    return run


PRODUCTION = {
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "DJANGO_ALLOWED_HOSTS": "files.example.com",
    "DJANGO_CSRF_TRUSTED_ORIGINS": "https://files.example.com",
}


def test_deploy_check_passes_with_debug_off_and_a_real_secret_key(run_deploy_check):
    result = run_deploy_check(**PRODUCTION)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_deploy_check_passes_behind_a_tls_proxy(run_deploy_check):
    result = run_deploy_check(
        **PRODUCTION,
        DJANGO_SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO,https",
        DJANGO_SECURE_HSTS_SECONDS="63072000",
    )

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("overrides", "warning"),
    [
        ({"DJANGO_DEBUG": "true"}, "security.W018"),
        ({"DJANGO_SECRET_KEY": "django-insecure-short"}, "security.W009"),
        ({"DJANGO_SESSION_COOKIE_SECURE": "false"}, "security.W012"),
        ({"DJANGO_SECURE_HSTS_SECONDS": "0"}, "security.W004"),
    ],
)
def test_deploy_check_flags_settings_left_unsafe(run_deploy_check, overrides, warning):
    result = run_deploy_check(**{**PRODUCTION, **overrides})

    assert result.returncode != 0
    assert warning in result.stdout + result.stderr


def test_collected_static_files_are_served_by_the_web_process_with_debug_off(
    settings, tmp_path, client
):
    settings.DEBUG = False
    settings.STATIC_ROOT = tmp_path / "static"
    call_command("collectstatic", interactive=False, verbosity=0)

    response = client.get("/static/uploads/site.css")

    assert response.status_code == 200
    assert b"".join(response.streaming_content)
