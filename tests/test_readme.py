"""The README's commands work as written, for a newcomer outside the virtualenv."""

from __future__ import annotations

import os
import re

import pytest
from django.conf import settings

from tests.processes import ROOT

README = (ROOT / "README.md").read_text()


def test_readme_runs_every_management_command_through_bin_manage():
    # ``python manage.py`` fails outside the virtualenv; ``.venv/bin/python manage.py``
    # works only from the project folder. bin/manage works from anywhere.
    assert not re.findall(r"python3? (?:\S*/)?manage\.py", README)
    assert not re.findall(r"^\s*(?:\S*/)?manage\.py \w", README, flags=re.MULTILINE)
    assert "bin/manage createsuperuser" in README


def test_readme_creates_the_account_its_examples_use_before_using_it():
    created = README.index("bin/manage createsuperuser --username alice")

    assert created < README.index("--owner alice")
    assert created < README.index("create_api_token alice")


@pytest.mark.django_db(transaction=True)
def test_bin_manage_runs_a_command_from_any_folder_without_the_virtualenv(tmp_path, subprocesses):
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "EVENTS_TEST_DATABASE_NAME": str(settings.DATABASES["default"]["NAME"]),
    }
    for key in ("DATABASE_URL", "TEST_VAR_DIR"):
        if key in os.environ:
            env[key] = os.environ[key]

    result = subprocesses.run(
        [str(ROOT / "bin" / "manage"), "event_status", "--check"],
        cwd=tmp_path,
        env=env,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")


def test_bin_manage_runs_next_to_bin_start_without_exporting_a_secret_key(tmp_path, subprocesses):
    # bin/start makes var/secret-key for its own processes; the README's commands in a
    # second terminal have debug off and would otherwise refuse to start.
    key_file = ROOT / "var" / "secret-key"
    made_here = not key_file.exists()
    if made_here:
        key_file.parent.mkdir(exist_ok=True)
        key_file.write_text("a-test-only-key-" + "x" * 40 + "\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "DJANGO_SETTINGS_MODULE": "config.settings.base",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    try:
        result = subprocesses.run(
            [str(ROOT / "bin" / "manage"), "check"], cwd=tmp_path, env=env, timeout=120
        )
    finally:
        if made_here:
            key_file.unlink()

    assert result.returncode == 0, result.stderr
    assert "refusing to start" not in result.stderr
