"""Flower's password: never a Django setting, never a placeholder or a short one."""

from __future__ import annotations

import json
import os
import secrets
import sys

import pytest

from config.startup import FLOWER_MIN_PASSWORD_LENGTH, flower_auth_problem
from tests.processes import ROOT, free_port

ENV_EXAMPLE = ROOT / ".env.example"


def env_example_value(name: str) -> str:
    for line in ENV_EXAMPLE.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == name:
            return value.strip()
    raise AssertionError(f"{name} is not in .env.example")


def child_env(**overrides: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "TEST_", "EVENTS_TEST_", "FLOWER_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.base",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        **overrides,
    )
    return env


@pytest.mark.parametrize(
    "credentials",
    [
        "operator:change-me",
        "operator:please-change-me-now",
        "operator:CHANGE-ME-1234567",
        "operator:short1",
        "operator:elevenchars",
        "admin:fine-password-1,other:change-me",
    ],
)
def test_placeholder_or_short_passwords_are_a_problem_naming_the_variable(credentials):
    problem = flower_auth_problem(basic_auth=credentials.split(","))

    assert problem is not None
    assert "FLOWER_BASIC_AUTH" in problem
    assert "\n" not in problem


def test_a_long_real_password_is_no_problem():
    password = "x" * FLOWER_MIN_PASSWORD_LENGTH
    assert flower_auth_problem(basic_auth=[f"operator:{password}"]) is None


def test_env_example_placeholder_is_refused(redis_server, subprocesses):
    placeholder = env_example_value("FLOWER_BASIC_AUTH")

    result = subprocesses.run(
        [sys.executable, "-m", "celery", "-A", "config", "flower", f"--port={free_port()}"],
        env=child_env(CELERY_BROKER_URL=redis_server.url, FLOWER_BASIC_AUTH=placeholder),
    )

    assert result.returncode != 0
    refusal = [line for line in result.stderr.splitlines() if "flower refused to start" in line]
    assert len(refusal) == 1, result.stderr
    assert "FLOWER_BASIC_AUTH" in refusal[0]


def test_the_worker_config_that_flower_shows_does_not_hold_the_flower_password(subprocesses):
    # Flower's /api/workers shows what the worker's remote-control "conf" command answers;
    # that is Celery's table of the Django settings.
    password = secrets.token_urlsafe(16)
    script = (
        "import django, json; django.setup()\n"
        "from config.celery import app\n"
        "from celery.worker.control import conf\n"
        "class State: pass\n"
        "state = State(); state.app = app\n"
        "print(json.dumps(conf(state), default=str))\n"
    )
    result = subprocesses.run(
        [sys.executable, "-c", script],
        env=child_env(
            CELERY_BROKER_URL="redis://127.0.0.1:1/0",
            FLOWER_BASIC_AUTH=f"operator:{password}",
        ),
    )

    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout.strip().splitlines()[-1])
    assert "SECRET_KEY" in shown  # the dump is the real one
    assert "FLOWER_BASIC_AUTH" not in shown
    assert password not in result.stdout
