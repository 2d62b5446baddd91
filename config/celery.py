"""The Celery app ``config``: ``celery -A config worker -Q indexing``.

Every setting lives in Django settings under the ``CELERY_`` namespace
(see ``config/settings/base.py``), so there is one place to read them.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def use_django_logging(**kwargs: object) -> None:
    """Keep Celery from replacing the root logger: Django's ``LOGGING`` applies."""
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)
