# The app image for web, workers, beat and Flower (docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=config.settings.base \
    DJANGO_DEBUG=false

WORKDIR /app

# Dependencies first, in their own layer, so a code change does not reinstall them.
# pyproject.toml installs no package of its own ([tool.setuptools] packages = []):
# this installs exactly the pinned dependencies.
COPY pyproject.toml README.md ./
RUN pip install .

COPY . .

# Static files are collected into the image; WhiteNoise serves them from the web process.
RUN DJANGO_SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput -v0

# An unprivileged user owns var/ (uploads, mail, beat's schedule); a named volume
# mounted on var/media starts with this ownership.
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p var/media var/mail \
    && chown -R app:app var
USER app

EXPOSE 8000 5555
CMD ["gunicorn", "config.wsgi:application", "--bind", "0.0.0.0:8000"]
