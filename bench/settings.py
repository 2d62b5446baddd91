"""Production settings plus the bench app (which changes nothing unless asked)."""

import os
import secrets

# Debug is off, as in production, so the base settings refuse to load without a secret
# key of this run's own; a benchmark signs nothing worth keeping.
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-" + secrets.token_urlsafe(50))

from config.settings.base import *  # noqa: F403
from config.settings.base import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench"]

# The bench uploads thousands of files for one owner as fast as it can; the per-user
# upload rate (issue 21) would measure the limit instead of the pipeline.
UPLOAD_RATE_PER_MINUTE = 0
