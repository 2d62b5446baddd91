"""Settings for every environment, read from the environment through django-environ.

Defaults run the whole stack on one machine: SQLite under ``var/``, Redis on
127.0.0.1:6379, mail written to files under ``var/mail/``.
"""

from __future__ import annotations

from pathlib import Path

import environ
from celery.schedules import crontab

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

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
    "events",
    "uploads",
    "notifications",
    "indexing",
    "audit",
    "webhooks",
]

MIDDLEWARE = [
    # First, so every later log line and every event of the request carries its id.
    "config.middleware.CorrelationIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves collected static files itself, so gunicorn needs no proxy for /static/.
    "whitenoise.middleware.WhiteNoiseMiddleware",
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
# The client address is REMOTE_ADDR. Behind a proxy every client shares the proxy's
# address; set AXES_IPWARE_PROXY_COUNT (and install django-axes[ipware]) there.

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
# Keep connections between requests and tasks: Celery's Django fixup closes them after
# every task otherwise, and reopening (plus the SQLite PRAGMAs above) costs more than a
# delivery's own queries.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=600)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# Celery 5.7's Django fixup closes every connection before and after each task unless
# CELERY_DB_REUSE_MAX is set (celery#4116, #9824); it then closes them only every that
# many tasks. events/celery_signals.py applies CONN_MAX_AGE and the health check around each task
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
# Email: default writes each message to a file under var/mail/ so it can be opened.
# django-environ reads filemail:///abs as a relative path: four slashes for absolute.
# ------------------------------------------------------------------------------
EMAIL_CONFIG = env.email("EMAIL_URL", default=f"filemail:///{VAR_DIR / 'mail'}")
vars().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env("DEFAULT_FROM_EMAIL", default="uploads@localhost")
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
# A claimed but unfinished mail is taken over after this long (its attempt died); at
# least the notifications task's time limit (a system check says so).
NOTIFICATIONS_CLAIM_TIMEOUT_SECONDS = env.int("NOTIFICATIONS_CLAIM_TIMEOUT_SECONDS", default=120)

# ------------------------------------------------------------------------------
# Webhooks
# ------------------------------------------------------------------------------
# Endpoints on loopback, private, link-local, multicast or reserved addresses are refused
# (when added, and at send time against the address connected to) unless this is true:
# for tests and receivers on your own machine, never on a server others can add URLs to.
WEBHOOKS_ALLOW_PRIVATE_ADDRESSES = env.bool("WEBHOOKS_ALLOW_PRIVATE_ADDRESSES", default=False)

# ------------------------------------------------------------------------------
# Celery
# ------------------------------------------------------------------------------
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-url
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="redis://127.0.0.1:6379/0")
# Never pickle: a message must not be able to run code in a worker.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#accept-content
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_EVENT_SERIALIZER = "json"
# The delivery ledger is the record of what happened; no result backend is needed.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-ignore-result
CELERY_TASK_IGNORE_RESULT = True
# Ack after the handler ran, so a worker that dies mid-task leaves the message for
# another one; reject (requeue) when the pool process is killed.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-acks-late
CELERY_TASK_ACKS_LATE = True
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-reject-on-worker-lost
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# Unacked messages come back after this long. It must exceed the longest task time
# limit and the longest retry countdown, or Redis hands a message out twice.
# https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html#visibility-timeout
CELERY_VISIBILITY_TIMEOUT = env.int("CELERY_VISIBILITY_TIMEOUT", default=3600)
# Short socket timeouts and few connection retries keep a publish from hanging a web
# request when Redis is down (celery#4556, #4296): the event waits in the outbox.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-transport-options
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    "socket_connect_timeout": 1,
    "socket_timeout": 5,
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-connection-timeout
CELERY_BROKER_CONNECTION_TIMEOUT = 2
# Bounded retry for every publish; the relay re-enqueues what still failed.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-publish-retry-policy
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
# Workers keep retrying to reach the broker at startup instead of exiting.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#broker-connection-retry-on-startup
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Default time limits; each consumer may declare its own (events.registry.Consumer).
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-time-limit
CELERY_TASK_TIME_LIMIT = 120
CELERY_TASK_SOFT_TIME_LIMIT = 100
# Task events cost about half the worker throughput (DESIGN.md). Flower switches them
# on in running workers when it starts (its enable_events option), so they are there
# whenever someone watches. Set CELERY_WORKER_SEND_TASK_EVENTS=true to force them on.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-send-task-events
CELERY_WORKER_SEND_TASK_EVENTS = env.bool("CELERY_WORKER_SEND_TASK_EVENTS", default=False)
CELERY_TASK_SEND_SENT_EVENT = env.bool("CELERY_WORKER_SEND_TASK_EVENTS", default=False)
# With acks late a worker reserves up to multiplier x concurrency messages and holds
# them unacknowledged, maybe for minutes behind a long task, while idle workers could
# run them. 1 reserves one message per pool process: each waits in Redis, where any
# free worker takes it. Costs one more round trip per task, nothing else here.
# https://docs.celeryq.dev/en/stable/userguide/optimizing.html#prefetch-limits
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-prefetch-multiplier
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# False on purpose: when the broker connection drops, a running task keeps running and
# commits its delivery (the ledger, not the ack, records success); the message that
# Redis hands out again finds it done and is skipped. Cancelling (True) would kill the
# attempt after its claim counted it, wasting an attempt and the work on a broker blip.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-cancel-long-running-tasks-on-connection-loss
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#worker-hijack-root-logger
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_DEFAULT_QUEUE = "events"
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#beat-schedule
CELERY_BEAT_SCHEDULE = {
    "relay-outbox": {
        "task": "events.relay_outbox",
        "schedule": env.float("EVENTS_RELAY_INTERVAL_SECONDS", default=5.0),
        "options": {"queue": "events", "expires": 30},
    },
    # Retention (events/retention.py), daily at a quiet hour; EVENTS_RETENTION_DAYS=0 skips.
    "prune-events": {
        "task": "events.prune_events",
        "schedule": crontab(minute=17, hour=3),
        "options": {"queue": "events", "expires": 3600},
    },
}
# Modules with tasks outside a tasks.py, imported by every worker.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#imports
CELERY_IMPORTS = ("events.retention",)
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# ------------------------------------------------------------------------------
# Event pipeline
# ------------------------------------------------------------------------------
# A claim holds a delivery for the consumer's hard time limit plus this margin; after
# that its attempt is dead for sure (killed, out of memory, host lost) and the relay
# sends the delivery again. The margin covers the pool replacing a killed process.
EVENTS_LEASE_MARGIN_SECONDS = env.int("EVENTS_LEASE_MARGIN_SECONDS", default=30)
# How long the relay leaves a delivery to the process that is publishing it (on commit,
# a retry, another relay) before it counts the unconfirmed send as lost.
EVENTS_PUBLISH_GRACE_SECONDS = env.int("EVENTS_PUBLISH_GRACE_SECONDS", default=10)
# Exponential backoff with full jitter for transient handler errors.
EVENTS_RETRY_BACKOFF_SECONDS = env.float("EVENTS_RETRY_BACKOFF_SECONDS", default=2.0)
EVENTS_RETRY_BACKOFF_MAX_SECONDS = env.int("EVENTS_RETRY_BACKOFF_MAX_SECONDS", default=600)
EVENTS_RELAY_BATCH_SIZE = env.int("EVENTS_RELAY_BATCH_SIZE", default=500)
# Beat deletes events older than this many days whose deliveries are all done
# (prune_events); 0 keeps everything.
EVENTS_RETENTION_DAYS = env.int("EVENTS_RETENTION_DAYS", default=30)

# ------------------------------------------------------------------------------
# Metrics (events/metrics.py): /metrics needs "Authorization: Bearer <token>" and is a
# 404 while the token is empty.
# ------------------------------------------------------------------------------
METRICS_TOKEN = env("METRICS_TOKEN", default="")

# ------------------------------------------------------------------------------
# Flower
# ------------------------------------------------------------------------------
FLOWER_BASIC_AUTH = env("FLOWER_BASIC_AUTH", default="")

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
        # Django's own console handler on "django" would print each record a second
        # time (without the ids) before it propagates to the root handler above.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
    },
}
