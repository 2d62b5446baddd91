"""Settings for every environment, read from the environment through django-environ.

Defaults run the whole stack on one machine: SQLite under ``var/``, Redis on
127.0.0.1:6379, mail written to files under ``var/mail/``. One module per concern: this
one holds Django's own and the apps'; the Celery app's are in ``celery.py`` and the event
pipeline's in ``events.py``, both imported at the end. ``docs/settings.md`` lists every
variable.
"""

from __future__ import annotations

from config.env import VAR_DIR, env

# ------------------------------------------------------------------------------
# Core
# ------------------------------------------------------------------------------
# Off unless asked for: debug pages show settings (broker and mail passwords included)
# and every URL pattern. bin/start turns it on for its loopback-only run.
DEBUG = env.bool("DJANGO_DEBUG", default=False)
# Public (it is in this file): good enough for a loopback debug run, never for anything else.
DEVELOPMENT_SECRET_KEY = "django-insecure-local-development-key-change-me-in-production"
# Keys anyone can read: this file's and .env.example's placeholder.
PUBLIC_SECRET_KEYS = frozenset({"", DEVELOPMENT_SECRET_KEY, "change-me-to-a-long-random-string"})
SECRET_KEY = env("DJANGO_SECRET_KEY", default="") or (DEVELOPMENT_SECRET_KEY if DEBUG else "")
if not DEBUG and SECRET_KEY in PUBLIC_SECRET_KEYS:
    # Here, not in a system check: web, workers, beat, Flower and every command import
    # these settings, and checks do not run for all of them. SystemExit with a message
    # prints that one line and exits 1, with no traceback to read past.
    raise SystemExit(
        "refusing to start: DJANGO_SECRET_KEY is unset or a public placeholder while "
        "DJANGO_DEBUG is off; set DJANGO_SECRET_KEY to a long random value, e.g. "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))'"
    )
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # Sign-in lock-out (see "Sign in and out" below).
    "axes",
    # Process wiring: system checks (config/apps.py).
    "config.apps.ProjectConfig",
    # The kernel, then what operates it: replay and retention, admin, status and metrics.
    "events",
    "housekeeping",
    "monitoring",
    "uploads",
    "notifications",
    "indexing",
    "audit",
    "webhooks",
]

MIDDLEWARE = [
    # First, so every later log line and every event of the request carries its id.
    "config.middleware.CorrelationIdMiddleware",
    # A client gone mid-body: one warning line, not a 500 traceback.
    "config.middleware.ClientDisconnectMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy on HTML pages (config/middleware.py; no django-csp here).
    "config.middleware.ContentSecurityPolicyMiddleware",
    # Serves collected static files itself, so gunicorn needs no proxy for /static/.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # PostgreSQL statement_timeout for web requests only (DATABASE_STATEMENT_TIMEOUT_MS).
    "config.middleware.StatementTimeoutMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it answers for a locked-out sign-in.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

# ------------------------------------------------------------------------------
# Sign in and out (login, logout, password change under /accounts/; no password reset:
# see config/urls.py)
# ------------------------------------------------------------------------------
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"
# https://docs.djangoproject.com/en/5.2/topics/auth/passwords/#enabling-password-validation
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# django-axes counts failed sign-ins (site and admin alike) and locks out a username, and
# separately an address, after AXES_FAILURE_LIMIT of them, for AXES_COOLOFF_TIME hours.
# Unlock: delete the attempts in admin (Axes > Access attempts), or
# `manage.py axes_reset_username NAME` / `axes_reset_ip ADDRESS`.
# https://django-axes.readthedocs.io/en/latest/4_configuration.html
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=1.0)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# ------------------------------------------------------------------------------
# Sign-in lock-out behind proxies (issue 21). The client address is REMOTE_ADDR unless
# AXES_IPWARE_PROXY_COUNT says how many proxies in front of Django each append to
# X-Forwarded-For; then it is that many entries from the right (config/client_ip.py,
# which axes consults first, so installing django-ipware changes nothing). Unset here:
# any X-Forwarded-For is the client's own words.
# ------------------------------------------------------------------------------
AXES_IPWARE_PROXY_COUNT = env.int("AXES_IPWARE_PROXY_COUNT", default=None)
AXES_CLIENT_IP_CALLABLE = "config.client_ip.client_ip_address"

# ------------------------------------------------------------------------------
# HTTPS and browser protections. Safe defaults follow DEBUG: on when it is off, so
# `manage.py check --deploy` is clean in production; each can be set from the
# environment (e.g. DJANGO_SECURE_SSL_REDIRECT=false when a proxy already redirects).
# https://docs.djangoproject.com/en/5.2/howto/deployment/checklist/
# ------------------------------------------------------------------------------
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=not DEBUG)
# Health checks (compose, load balancers) probe over plain HTTP from inside.
SECURE_REDIRECT_EXEMPT = [r"^health/$"]
SESSION_COOKIE_SECURE = env.bool("DJANGO_SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("DJANGO_CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool(
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG
)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=not DEBUG)
# Behind a TLS-terminating proxy that sets it, e.g. "HTTP_X_FORWARDED_PROTO,https". Only
# set it when the proxy always overwrites that header: a client could send it otherwise.
_proxy_ssl_header = env.list("DJANGO_SECURE_PROXY_SSL_HEADER", default=[])
SECURE_PROXY_SSL_HEADER = tuple(_proxy_ssl_header) if len(_proxy_ssl_header) == 2 else None
# Origins (scheme + host) allowed to post forms, e.g. "https://files.example.com".
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

# ------------------------------------------------------------------------------
# Database
# ------------------------------------------------------------------------------
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while a worker writes; IMMEDIATE takes the write
    # lock when a transaction begins, so two writers queue on busy_timeout instead of
    # one failing with "database is locked" when it upgrades a read lock mid-transaction.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": (
                "PRAGMA journal_mode=WAL;"
                "PRAGMA synchronous=NORMAL;"
                "PRAGMA busy_timeout=20000;"
                "PRAGMA foreign_keys=ON;"
            ),
        }
    )
# A client that stops talking inside a transaction (a worker host cut off by a network
# partition, a frozen process) would keep its row locks until TCP keepalive notices, two
# hours by default, and every attempt needing those rows (the delivery taken over after
# its lease, the audit chain's next entry) would wait as long. PostgreSQL ends such a
# session after this long idle inside a transaction; 0 turns it off. An attempt is never
# idle that long: it is killed at its time limit (config/checks.py, events.E006).
DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS = env.int(
    "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS", default=180
)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    _options["options"] = (
        f"{_options.get('options', '')} -c idle_in_transaction_session_timeout="
        f"{DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS * 1000}"
    ).strip()
# Keep connections between requests and tasks: Celery's Django fixup closes them after
# every task otherwise, and reopening (plus the SQLite PRAGMAs above) costs more than a
# delivery's own queries.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=600)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

# ------------------------------------------------------------------------------
# Bounded web work (issue 21). On PostgreSQL each statement of a web request is
# cancelled after this many milliseconds (config.middleware.StatementTimeoutMiddleware;
# workers and commands are not held to it). Half of gunicorn's 60 s --timeout, so a
# runaway query ends with an answer instead of a killed gunicorn worker. 0: no limit.
# ------------------------------------------------------------------------------
DATABASE_STATEMENT_TIMEOUT_MS = env.int("DATABASE_STATEMENT_TIMEOUT_MS", default=30_000)
# Celery 5.7's Django fixup closes every connection before and after each task unless
# CELERY_DB_REUSE_MAX is set (celery#4116, #9824); it then closes them only every that
# many tasks. config/celery_signals.py applies CONN_MAX_AGE and the health check around each task
# instead, as Django does around each request. Reconnecting per task (PostgreSQL forks a
# backend, SQLite reruns the PRAGMAs) cost more than a delivery's own queries.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)

# ------------------------------------------------------------------------------
# Files and uploads
# ------------------------------------------------------------------------------
MEDIA_ROOT = env("MEDIA_ROOT", default=str(VAR_DIR / "media"))
MEDIA_URL = "/media/"
UPLOAD_MAX_BYTES = env.int("UPLOAD_MAX_BYTES", default=25 * 1024 * 1024)
# Django keeps request bodies up to this size in memory; larger ones go to a temp file.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
# Several files may come in one form post; a body above this (plus multipart framing) is
# refused at its first file, before any of its bytes are read.
UPLOAD_MAX_REQUEST_BYTES = env.int("UPLOAD_MAX_REQUEST_BYTES", default=10 * UPLOAD_MAX_BYTES)
# The limit is enforced while the body streams in (uploads/intake.py), not afterwards.
FILE_UPLOAD_HANDLERS = [
    "uploads.intake.LimitedUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]
# Content types (sniffed from the bytes) that may be uploaded, e.g.
# "image/*,application/pdf,text/plain"; empty allows every type.
UPLOAD_ALLOWED_TYPES = env.list("UPLOAD_ALLOWED_TYPES", default=[])

# ------------------------------------------------------------------------------
# Per-user upload limits (issue 21; uploads.services.check_upload_limits), counted on
# the database so every web host shares them. Each upload costs every consumer's work.
# Defaults a person never meets: 60 uploads a minute (one a second, sustained) answers
# 429 with Retry-After beyond it; 10 GiB stored answers 413 quota_exceeded. 0 turns a
# limit off. Staff are held to them too unless UPLOAD_LIMITS_EXEMPT_STAFF=true.
# ------------------------------------------------------------------------------
UPLOAD_RATE_PER_MINUTE = env.int("UPLOAD_RATE_PER_MINUTE", default=60)
UPLOAD_QUOTA_BYTES = env.int("UPLOAD_QUOTA_BYTES", default=10 * 1024**3)
UPLOAD_LIMITS_EXEMPT_STAFF = env.bool("UPLOAD_LIMITS_EXEMPT_STAFF", default=False)

# ------------------------------------------------------------------------------
# Email: default writes each message to a file under var/mail/ so it can be opened.
# django-environ reads filemail:///abs as a relative path: four slashes for absolute.
# ------------------------------------------------------------------------------
EMAIL_CONFIG = env.email("EMAIL_URL", default=f"filemail:///{VAR_DIR / 'mail'}")
vars().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="uploads@localhost")
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)

# ------------------------------------------------------------------------------
# Webhooks
# ------------------------------------------------------------------------------
# Endpoints on loopback, private, link-local, multicast or reserved addresses are refused
# (when added, and at send time against the address connected to) unless this is true:
# for tests and receivers on your own machine, never on a server others can add URLs to.
WEBHOOKS_ALLOW_PRIVATE_ADDRESSES = env.bool("WEBHOOKS_ALLOW_PRIVATE_ADDRESSES", default=False)
# One webhook call (connect, send, the whole answer) must fit in this many seconds, or it
# is a transient failure: read timeouts alone let a trickling receiver hold a worker.
WEBHOOKS_CALL_DEADLINE_SECONDS = env.float("WEBHOOKS_CALL_DEADLINE_SECONDS", default=10.0)
# An endpoint whose calls have all failed for this long is disabled and its owner mailed.
WEBHOOKS_DISABLE_AFTER_DAYS = env.float("WEBHOOKS_DISABLE_AFTER_DAYS", default=5.0)
# After a secret rotation the old secret keeps signing (a second signature) this long.
WEBHOOKS_SECRET_OVERLAP_HOURS = env.float("WEBHOOKS_SECRET_OVERLAP_HOURS", default=24.0)

# ------------------------------------------------------------------------------
# Metrics (monitoring/metrics.py): /metrics needs "Authorization: Bearer <token>" and is a
# 404 while the token is empty.
# ------------------------------------------------------------------------------
METRICS_TOKEN = env("METRICS_TOKEN", default="")

# ------------------------------------------------------------------------------
# Flower
# ------------------------------------------------------------------------------
# FLOWER_BASIC_AUTH is read by Flower from the environment, and checked at its start by
# config/startup.py. It is not a Django setting on purpose: Celery's configuration dump
# (Flower's /api/workers) lists every Django setting and would show it.

# ------------------------------------------------------------------------------
# Logging
# ------------------------------------------------------------------------------
LOG_LEVEL = env("LOG_LEVEL", default="INFO")
# "json": one JSON object per line, for log shippers; "plain": for people.
LOG_FORMAT = env("LOG_FORMAT", default="plain")
# Every line says which request, command or task it belongs to (config/logging.py).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "correlation": {"()": "config.logging.CorrelationFilter"},
    },
    "formatters": {
        "plain": {
            "format": (
                "%(asctime)s %(levelname)s %(processName)s %(name)s "
                "[%(correlation_id)s%(task_label)s]: %(message)s"
            ),
        },
        "json": {"()": "config.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["correlation"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # django-axes announces itself at every process start; its lock-outs still log.
        "axes.apps": {"level": "WARNING"},
        # httpx logs every request's full URL at INFO; a webhook URL may carry a secret
        # in its path or user part (webhooks log the endpoint id instead).
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        # Django's own console handler on "django" would print each record a second
        # time (without the ids) before it propagates to the root handler above.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
    },
}

# ------------------------------------------------------------------------------
# Celery and the event pipeline, one module each
# ------------------------------------------------------------------------------
from config.settings.celery import *  # noqa: E402, F403
from config.settings.events import *  # noqa: E402, F403
from config.settings.storage import *  # noqa: E402, F403
