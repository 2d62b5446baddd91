"""Test settings: the base settings with only what tests need changed.

Integration tests run real Celery workers in other processes, so the test database
must be a file (SQLite) or a server (PostgreSQL) those processes can open too.
"""

from __future__ import annotations

import os
from pathlib import Path

# The base settings refuse to load without a real secret key when debug is off (as it is
# in tests); a test run has its own, set before they load. Never used outside tests.
os.environ.setdefault("DJANGO_SECRET_KEY", "test-settings-only-" + "x" * 50)

from config.env import BASE_DIR, env
from config.settings.base import *  # noqa: F403
from config.settings.base import DATABASES, INSTALLED_APPS

# A probe consumer and event type that tests use to inject failures into a real worker.
INSTALLED_APPS = [*INSTALLED_APPS, "tests.probe"]

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

_test_db_dir = Path(env("TEST_VAR_DIR", default=str(BASE_DIR / "var" / "test")))
_test_db_dir.mkdir(parents=True, exist_ok=True)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {"NAME": str(_test_db_dir / "test-db.sqlite3")}
    DATABASES["default"]["NAME"] = str(_test_db_dir / "db.sqlite3")
# Worker processes that tests start open the test database by this name.
if env("EVENTS_TEST_DATABASE_NAME", default=""):
    DATABASES["default"]["NAME"] = env("EVENTS_TEST_DATABASE_NAME")

MEDIA_ROOT = _test_db_dir / "media"
# pytest-django turns DEBUG off, so WhiteNoise looks for collected files: an empty folder
# rather than a warning per test client.
STATIC_ROOT = _test_db_dir / "static"
STATIC_ROOT.mkdir(exist_ok=True)

# Fast retries, short leases and a short publish grace keep fault-injection tests quick.
EVENTS_RETRY_BACKOFF_SECONDS = env.float("EVENTS_RETRY_BACKOFF_SECONDS", default=0.05)
EVENTS_RETRY_BACKOFF_MAX_SECONDS = 1
EVENTS_LEASE_MARGIN_SECONDS = env.int("EVENTS_LEASE_MARGIN_SECONDS", default=1)
EVENTS_PUBLISH_GRACE_SECONDS = env.int("EVENTS_PUBLISH_GRACE_SECONDS", default=1)

# Workers that tests start write mail where the tests can read it, unless a test gives
# its worker an SMTP server of its own on loopback (TEST_EMAIL_URL=smtp://127.0.0.1:PORT).
EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = _test_db_dir / "mail"
if env("TEST_EMAIL_URL", default=""):
    vars().update(env.email("TEST_EMAIL_URL"))

# Never the machine's Redis: tests/conftest.py starts a private redis-server and points
# the Celery app (and the workers it starts) at it. Port 1 refuses at once meanwhile.
CELERY_BROKER_URL = env("TEST_CELERY_BROKER_URL", default="redis://127.0.0.1:1/0")

# Webhook tests call receivers on 127.0.0.1; one test turns this off to see the refusal.
WEBHOOKS_ALLOW_PRIVATE_ADDRESSES = True
# A slow receiver times out in a test without a ten-second wait.
WEBHOOKS_READ_TIMEOUT_SECONDS = 1.5
# A trickling receiver is cut off within a test's patience.
WEBHOOKS_CALL_DEADLINE_SECONDS = 3.0

# Debug is off in tests as in production, which turns the HTTPS defaults on; the test
# client speaks plain HTTP. tests/test_deploy_check.py covers the production values.
SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
SECURE_HSTS_SECONDS = 0
