"""Shared fixtures: a private Redis, a live Celery worker, users."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import current_app
from django.conf import settings
from django.contrib.auth.models import User

from config.deployment import all_queues
from tests.processes import ROOT, CeleryWorker, RedisServer

# Workers this session started, so teardown knows whether anyone may still be writing.
_started_workers: list[CeleryWorker] = []


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = Path(os.environ.get("TEST_ARTIFACTS_DIR", ROOT / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session", autouse=True)
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for the whole session; the Celery app publishes to it."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    current_app.conf.broker_url = server.url
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _isolated_media(settings) -> Iterator[None]:
    """Each test starts with empty media and mail folders."""
    for folder in (Path(settings.MEDIA_ROOT), Path(settings.EMAIL_FILE_PATH)):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    yield


@pytest.fixture(scope="session")
def _session_worker(
    redis_server: RedisServer, django_db_setup: None, artifacts_dir: Path
) -> Iterator[CeleryWorker]:
    worker = CeleryWorker(
        broker_url=redis_server.url,
        env={"EVENTS_TEST_DATABASE_NAME": str(settings.DATABASES["default"]["NAME"])},
        # Every consumer's queue and housekeeping's, as the registry has them (probe too).
        queues=all_queues(),
        log_path=artifacts_dir / "worker.log",
    )
    worker.start()
    _started_workers.append(worker)
    yield worker
    worker.stop()


@pytest.fixture
def live_worker(
    _session_worker: CeleryWorker, redis_server: RedisServer, transactional_db: None
) -> CeleryWorker:
    """A real worker on every queue, sharing the test database; restarted if a test killed it.

    Tests that use it see committed data only, so they run with ``transactional_db``.
    """
    if not redis_server.is_up():
        redis_server.start()
    if not _session_worker.running:
        _session_worker.start()
    return _session_worker


@pytest.fixture(autouse=True)
def _worker_quiet_before_flush(request: pytest.FixtureRequest) -> Iterator[None]:
    """Let the session worker finish what a transactional test enqueued before the flush.

    Emptying the tables while the worker still writes deliveries deadlocks on PostgreSQL
    (TRUNCATE against row locks). Requesting ``transactional_db`` here makes this
    teardown run before its flush.
    """
    marker = request.node.get_closest_marker("django_db")
    transactional = "transactional_db" in request.fixturenames or bool(
        marker and marker.kwargs.get("transaction")
    )
    if not transactional:
        yield
        return
    request.getfixturevalue("transactional_db")
    yield
    if not any(worker.running for worker in _started_workers):
        return
    from events.models import Delivery

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (
        Delivery.objects.filter(state__in=Delivery.OPEN_STATES, enqueued_at__isnull=False).exists()
    ):
        time.sleep(0.1)


class RelayLoop:
    """``relay_outbox`` every ``interval`` seconds in a thread, as beat runs it in production."""

    def __init__(self, interval: float = 0.3) -> None:
        self.interval = interval
        self.passes = 0
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay-loop", daemon=True)

    def _run(self) -> None:
        from django.db import connection

        try:
            while not self._stop.is_set():
                self._tick()
                self.passes += 1
                self._stop.wait(self.interval)
        finally:
            connection.close()

    def _tick(self) -> None:
        from events.relay import relay_outbox

        self.published += relay_outbox().published

    def start(self) -> RelayLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join(timeout=30)

    def __enter__(self) -> RelayLoop:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class BeatLoop(RelayLoop):
    """Sends the ``events.relay_outbox`` task every ``interval`` s, as beat does in
    production, so the relay runs inside a worker's pool process; broker errors are
    logged by beat and the next tick tries again, so they are ignored here."""

    def _tick(self) -> None:
        from kombu.exceptions import KombuError
        from redis.exceptions import RedisError

        with contextlib.suppress(OSError, KombuError, RedisError):
            current_app.send_task("events.relay_outbox", queue="events", expires=30)


@pytest.fixture
def running_relay(live_worker: CeleryWorker) -> Iterator[RelayLoop]:
    """The relay running in the background of a test with a live worker."""
    with RelayLoop() as loop:
        yield loop


@pytest.fixture
def user(db: None) -> User:
    return User.objects.create_user("alice", "alice@example.com", "correct horse battery")


@pytest.fixture
def other_user(db: None) -> User:
    return User.objects.create_user("bob", "bob@example.com", "correct horse battery")
