"""Safe by default: debug off unless asked for, no process starts on a public secret key,
and error pages that are the site's own."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Callable

import pytest
from django.test import RequestFactory
from django.views.defaults import server_error

from tests.processes import ChildProcesses, free_port

# Settings a developer's or CI's environment might carry into the child process.
_INHERITED = ("DJANGO_", "TEST_", "EVENTS_TEST_", "FLOWER_")
PUBLIC_DEVELOPMENT_KEY = "django-insecure-local-development-key-change-me-in-production"


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run_process(subprocesses: ChildProcesses) -> Run:
    """``run_process(argv, **settings)``: ``argv`` with base settings and no inherited ones."""

    def run(argv: list[str], timeout: float = 60, **overrides: str):
        env = {key: value for key, value in os.environ.items() if not key.startswith(_INHERITED)}
        env.update(
            DJANGO_SETTINGS_MODULE="config.settings.base",
            CELERY_BROKER_URL="redis://127.0.0.1:1/0",
            **overrides,
        )
        return subprocesses.run(argv, env=env, timeout=timeout)

    return run


@pytest.fixture
def manage(run_process: Run) -> Run:
    """``manage(*args, **settings)``: ``manage.py`` through :func:`run_process`."""

    def run(*args: str, **overrides: str):
        return run_process([sys.executable, "manage.py", *args], **overrides)

    return run


def assert_refused_in_one_line(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if "DJANGO_SECRET_KEY" in line]
    assert lines, result.stderr
    assert "refusing to start" in lines[0]


def test_debug_is_off_when_nothing_turns_it_on(manage):
    result = manage(
        "shell",
        "-c",
        "from django.conf import settings; print('DEBUG', settings.DEBUG)",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
    )

    assert result.returncode == 0, result.stderr
    assert "DEBUG False" in result.stdout


@pytest.mark.parametrize(
    "secret",
    [None, "", PUBLIC_DEVELOPMENT_KEY, "change-me-to-a-long-random-string"],
    ids=["unset", "empty", "public-dev-key", "env-example-placeholder"],
)
def test_a_command_refuses_to_start_without_a_real_secret_key(manage, secret):
    overrides = {} if secret is None else {"DJANGO_SECRET_KEY": secret}

    result = manage("check", **overrides)

    assert_refused_in_one_line(result)
    # one clear line, not a traceback
    assert result.stderr.strip().count("\n") == 0, result.stderr


def test_debug_on_runs_with_the_development_key(manage):
    result = manage("check", DJANGO_DEBUG="true")

    assert result.returncode == 0, result.stderr


def test_a_celery_worker_refuses_to_start_without_a_real_secret_key(run_process):
    result = run_process(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "events", "-c", "1"],
        DJANGO_SECRET_KEY=PUBLIC_DEVELOPMENT_KEY,
    )

    assert_refused_in_one_line(result)


def test_gunicorn_refuses_to_start_without_a_real_secret_key(run_process):
    result = run_process(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "config.wsgi:application",
            "--bind",
            f"127.0.0.1:{free_port()}",
            "--workers",
            "1",
        ],
        timeout=90,
    )

    assert_refused_in_one_line(result)


def test_a_wrong_host_gets_a_plain_400_without_settings(client, settings):
    response = client.get("/", HTTP_HOST="attacker.example")

    assert response.status_code == 400
    body = response.content.decode()
    assert "CELERY_BROKER_URL" not in body
    assert "SECRET" not in body


@pytest.mark.django_db
def test_a_missing_page_is_the_sites_own_404_without_url_patterns(client, user):
    client.force_login(user)

    response = client.get("/no/such/page/")

    assert response.status_code == 404
    body = response.content.decode()
    assert "error-page" in body
    assert "Page not found" in body
    assert "urlpatterns" not in body and "api/" not in body


def test_a_server_error_is_the_sites_own_500_page():
    request = RequestFactory().get("/")

    response = server_error(request)

    assert response.status_code == 500
    body = response.content.decode()
    assert "error-page" in body
    assert "Something went wrong" in body
