"""WSGI entry point (gunicorn config.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application
from gunicorn.errors import AppImportError

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")

try:
    application = get_wsgi_application()
except SystemExit as refusal:
    # The settings refused to load (config/settings/base.py). gunicorn starts a new worker
    # each time one merely exits, forever; AppImportError makes it print the one line and
    # stop the whole server. Other WSGI servers see an ordinary import failure.
    raise AppImportError(str(refusal)) from None
