"""The test settings plus one ``INSTALLED_APPS`` line: the scratch consumer app.

Only processes a test starts use it (``DJANGO_SETTINGS_MODULE=tests.scratch.settings``),
so the rest of the suite never sees the scratch consumer.
"""

from __future__ import annotations

from config.env import env
from config.settings.test import *  # noqa: F403
from config.settings.test import INSTALLED_APPS, MEDIA_ROOT

INSTALLED_APPS = [*INSTALLED_APPS, "tests.scratch"]

# Where the scratch handler writes its side effects (tests/scratch/consumer.py).
SCRATCH_EFFECTS_DIR = env("SCRATCH_EFFECTS_DIR", default=str(MEDIA_ROOT.parent / "scratch"))
