"""The Celery app ``config``: ``celery -A config worker -Q indexing``.

Every setting lives in Django settings under the ``CELERY_`` namespace
(see ``config/settings/base.py``), so there is one place to read them.
"""

from __future__ import annotations

import os

from celery import Celery

# Signal receivers every ``celery -A config`` process needs: correlation ids, database
# connections and logging per task; a worker and Flower refuse an unsafe configuration.
from config import celery_signals, startup  # noqa: F401

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
