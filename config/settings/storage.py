"""Where uploaded files are stored: the local disk (default) or an S3-compatible store.

``MEDIA_STORAGE=filesystem`` keeps files under ``MEDIA_ROOT`` (one machine).
``MEDIA_STORAGE=s3`` keeps them in a bucket through django-storages' S3 backend
(boto3), configured with django-storages' own ``AWS_*`` settings, so web and worker
hosts share no directory. Every process refuses to start on a configuration that
cannot work, in one line naming the setting (``config.checks.storage_config_problem``).
``docs/settings.md`` lists every variable; ``docs/several-hosts.md`` says when to use S3.
"""

from __future__ import annotations

from config.checks import storage_config_problem
from config.env import env

MEDIA_STORAGE = env("MEDIA_STORAGE", default="filesystem").strip().lower()

AWS_S3_ENDPOINT_URL = env("AWS_S3_ENDPOINT_URL", default="")
AWS_STORAGE_BUCKET_NAME = env("AWS_STORAGE_BUCKET_NAME", default="")
AWS_ACCESS_KEY_ID = env("AWS_ACCESS_KEY_ID", default="")
AWS_SECRET_ACCESS_KEY = env("AWS_SECRET_ACCESS_KEY", default="")
AWS_S3_REGION_NAME = env("AWS_S3_REGION_NAME", default="us-east-1")
# A folder (key prefix) inside the bucket, for a bucket shared with other data.
AWS_LOCATION = env("AWS_LOCATION", default="")
# Path-style URLs (endpoint/bucket/key): S3-compatible servers (SeaweedFS, MinIO) are
# reached by one host name, with no wildcard DNS entry per bucket.
AWS_S3_ADDRESSING_STYLE = env("AWS_S3_ADDRESSING_STYLE", default="path")
AWS_S3_SIGNATURE_VERSION = "s3v4"
# Objects are private: files are served by the web app to their owner only, never by URL.
AWS_DEFAULT_ACL = None
AWS_QUERYSTRING_AUTH = True
# Storage names are random (uploads.models.random_storage_name) and never collide, so
# no existence check (one more round trip) before each write.
AWS_S3_FILE_OVERWRITE = True

_problem = storage_config_problem(
    media_storage=MEDIA_STORAGE,
    bucket=AWS_STORAGE_BUCKET_NAME,
    endpoint_url=AWS_S3_ENDPOINT_URL,
)
if _problem:
    # As for DJANGO_SECRET_KEY (base.py): every process imports settings, checks do not
    # run in all of them, and SystemExit prints this one line with no traceback.
    raise SystemExit(f"refusing to start: {_problem}")


def storages_for(media_storage: str) -> dict[str, dict[str, str]]:
    """Django's ``STORAGES`` for ``MEDIA_STORAGE`` (``filesystem`` or ``s3``)."""
    backends = {
        "filesystem": "django.core.files.storage.FileSystemStorage",
        # django-storages' S3Storage, with files opened for reading streamed (uploads.storage).
        "s3": "uploads.storage.StreamingS3Storage",
    }
    return {
        "default": {"BACKEND": backends[media_storage]},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


STORAGES = storages_for(MEDIA_STORAGE)
