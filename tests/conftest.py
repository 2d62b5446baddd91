"""Shared fixtures (a private Redis, live Celery workers, child processes, users) and the
test tiers derived from them.

Tiers: ``worker`` (a live Celery worker), ``subprocess`` (starts child processes),
``browser`` (drives Chromium), ``bench`` (the benchmark). Nobody writes these markers by
hand: ``pytest_collection_modifyitems`` derives them from the fixtures a test requests,
directly or through other fixtures, so ``bin/test --fast`` (which deselects them) cannot
run a test that starts a process. Two guards keep it so: collection fails when a test
starts processes directly (``subprocess``, ``run_manage``, ``CeleryWorker``) without one
of the fixtures below, and a test outside every tier that starts a process anyway fails.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import subprocess
import tempfile
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from celery import current_app
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from config.deployment import all_queues
from tests import processes
from tests.processes import ROOT, CeleryWorker, ChildProcesses, RedisServer, S3Media, SeaweedFS

# ------------------------------------------------------------------------------
# Tiers, derived from fixtures
# ------------------------------------------------------------------------------
# A test requesting one of these fixtures, directly or through another fixture, is in
# the tier. ``item.fixturenames`` is already the transitive closure, so ``live_worker``,
# ``running_relay`` and any fixture built on them count as ``_session_worker``.
TIER_FIXTURES: dict[str, frozenset[str]] = {
    "worker": frozenset({"_session_worker", "make_worker"}),
    "subprocess": frozenset(
        {"subprocesses", "run_manage", "make_worker", "pdf_extraction", "seaweedfs", "hosts_stack"}
    ),
    "browser": frozenset({"system_chromium"}),
    # Several hosts in network namespaces (tests/hosts.py): root only; in the
    # subprocess tier too, so bin/test --fast never makes namespaces.
    "hosts": frozenset({"hosts_stack"}),
}
TIERS = ("worker", "subprocess", "browser", "bench", "hosts")
# The benchmark is one module; its test starts the whole pipeline.
BENCH_MODULE_PREFIX = "test_bench"
# Names in tests/processes.py whose use starts a process.
PROCESS_STARTERS = frozenset({processes.run_manage, CeleryWorker, RedisServer, SeaweedFS})
# Modules other engineers own that still start processes without the fixtures: their
# tests are marked from a scan of their code, and the guard spares them until they move.
NOT_YET_ON_PROCESS_FIXTURES = frozenset(
    {
        "tests/test_bench.py",
        "tests/test_compose.py",
        "tests/test_consumers.py",
        "tests/test_start.py",
    }
)


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    """``code`` and every function, lambda and comprehension defined inside it."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def process_starting_name(function: Callable[..., Any]) -> str | None:
    """The first name through which ``function`` starts a process directly, or ``None``.

    Follows the helper functions of the tests package it calls (through decorators such
    as ``functools.cache``), so a module-level helper that runs ``subprocess.run`` counts
    for every test that calls it.
    """
    pending = [inspect.unwrap(function)]
    seen: set[types.CodeType] = set()
    while pending:
        current = pending.pop()
        code = getattr(current, "__code__", None)
        if code is None or code in seen:
            continue
        seen.add(code)
        namespace = current.__globals__
        for nested in _code_objects(code):
            for name in nested.co_names:
                value = namespace.get(name)
                if value is None:
                    continue
                if inspect.isfunction(getattr(value, "__wrapped__", None)):
                    value = inspect.unwrap(value)  # functools.cache, wraps: the code inside
                if value is subprocess or getattr(value, "__module__", None) == "subprocess":
                    return f"subprocess.{name}" if value is not subprocess else "subprocess"
                if isinstance(value, type | types.FunctionType) and value in PROCESS_STARTERS:
                    return name
                # This module's own functions are the tier machinery, not test code.
                if (
                    inspect.isfunction(value)
                    and value.__module__.startswith("tests.")
                    and value.__module__ != __name__
                ):
                    pending.append(value)
    return None


def tiers_from_fixtures(fixturenames: Iterable[str]) -> set[str]:
    """The tiers that the fixtures a test uses put it in."""
    names = set(fixturenames)
    return {tier for tier, fixtures in TIER_FIXTURES.items() if names & fixtures}


def _functions_of(item: pytest.Function) -> Iterator[tuple[str, Callable[..., Any]]]:
    """The test function and the fixtures it uses that are defined in test modules."""
    yield "the test", item.function
    for name, definitions in item._fixtureinfo.name2fixturedefs.items():
        for definition in definitions:
            module = getattr(definition.func, "__module__", "")
            if module.startswith("tests.") and module != __name__:
                yield f"fixture {name}", definition.func


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with the tiers its fixtures and its code put it in."""
    unmarked_process_starters: list[str] = []
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        tiers = tiers_from_fixtures(item.fixturenames)
        path = item.path.relative_to(ROOT).as_posix()
        if item.path.name.startswith(BENCH_MODULE_PREFIX):
            tiers.add("bench")
        for where, function in _functions_of(item):
            starter = process_starting_name(function)
            if starter is None:
                continue
            if "subprocess" not in tiers and path not in NOT_YET_ON_PROCESS_FIXTURES:
                unmarked_process_starters.append(f"{item.nodeid} ({where} uses {starter})")
            tiers.add("subprocess")
        for tier in sorted(tiers):
            item.add_marker(tier)
    if unmarked_process_starters:
        raise pytest.UsageError(
            "these tests start processes without a fixture that marks their tier; request "
            "`subprocesses`, `run_manage` or `make_worker` (tests/conftest.py) instead:\n  "
            + "\n  ".join(unmarked_process_starters)
        )


@pytest.fixture(autouse=True)
def _processes_only_in_their_tiers(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test outside every process tier that starts a process anyway fails, saying why.

    The collection hook reads code; this catches what it cannot see (a process started
    through a fixture's object or a library), so the fast run stays free of processes.
    """
    if any(request.node.get_closest_marker(tier) for tier in TIERS):
        return
    nodeid = request.node.nodeid

    def refuse(self: subprocess.Popen[Any], args: Any, *more: Any, **options: Any) -> None:
        pytest.fail(
            f"{nodeid} started a process ({args!r}) but is in no process tier: start it "
            "through the `subprocesses` or `run_manage` fixture so the test is marked",
            pytrace=False,
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


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


def _test_worker(
    redis_server: RedisServer,
    queues: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
) -> CeleryWorker:
    """A worker on ``queues`` against the test database, known to the flush guard below;
    ``env`` adds settings of its own (``config/settings/test.py`` reads a few)."""
    worker = CeleryWorker(
        broker_url=redis_server.url,
        env={
            "EVENTS_TEST_DATABASE_NAME": str(settings.DATABASES["default"]["NAME"]),
            **(env or {}),
        },
        queues=queues,
        log_path=log_path,
    )
    _started_workers.append(worker)
    return worker


@pytest.fixture(scope="session")
def _session_worker(
    redis_server: RedisServer, django_db_setup: None, artifacts_dir: Path
) -> Iterator[CeleryWorker]:
    # Every consumer's queue and housekeeping's, as the registry has them (probe too).
    worker = _test_worker(redis_server, all_queues(), artifacts_dir / "worker.log")
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def make_worker(
    redis_server: RedisServer, django_db_setup: None, artifacts_dir: Path
) -> Iterator[Callable[..., CeleryWorker]]:
    """``make_worker(queues, log_name, env=None)``: a worker besides the session's, not yet
    started; stopped at the end of the session if a test left it running."""
    made: list[CeleryWorker] = []

    def make(
        queues: Sequence[str], log_name: str, env: Mapping[str, str] | None = None
    ) -> CeleryWorker:
        worker = _test_worker(redis_server, queues, artifacts_dir / log_name, env)
        made.append(worker)
        return worker

    yield make
    for worker in made:
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
def subprocesses() -> Iterator[ChildProcesses]:
    """Child processes for this test; those it started and left running are stopped."""
    children = ChildProcesses()
    yield children
    children.stop_all()


@pytest.fixture
def pdf_extraction() -> None:
    """For tests that extract a PDF: each extraction runs in a child process with CPU and
    memory limits (``indexing.extraction``), so such a test is in the subprocess tier."""


@pytest.fixture
def run_manage(django_db_setup: None) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_manage(*args)``: ``manage.py`` in a child process against the test database.

    The child sees committed rows only: tests using it run with ``transactional_db``.
    """
    return processes.run_manage


# ------------------------------------------------------------------------------
# S3 media storage on a real SeaweedFS
# ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A private SeaweedFS S3 server for the session (about 3 s to start)."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _media_bucket(seaweedfs: SeaweedFS) -> str:
    return seaweedfs.create_bucket()


@pytest.fixture
def s3_media(seaweedfs: SeaweedFS, _media_bucket: str, settings: Any) -> S3Media:
    """This process keeps media on SeaweedFS (``MEDIA_STORAGE=s3``), in a folder of the
    session's bucket that is this test's alone."""
    from config.settings.storage import storages_for

    media = S3Media(seaweedfs, _media_bucket, f"test-{uuid.uuid4().hex[:12]}")
    for name, value in media.env.items():
        setattr(settings, name, value)
    settings.STORAGES = storages_for("s3")
    return media


@pytest.fixture
def s3_worker(
    s3_media: S3Media,
    redis_server: RedisServer,
    django_db_setup: None,
    transactional_db: None,
    artifacts_dir: Path,
    tmp_path: Path,
) -> Iterator[CeleryWorker]:
    """A worker on every queue whose media is ``s3_media``'s bucket and whose MEDIA_ROOT
    is a folder of its own: it shares no directory with this process.

    Workers already running (the session's) are stopped first, so no worker reading the
    local disk takes these messages; ``live_worker`` starts the session's again."""
    for worker in _started_workers:
        if worker.running:
            worker.stop()
    worker = CeleryWorker(
        broker_url=redis_server.url,
        env={
            "EVENTS_TEST_DATABASE_NAME": str(settings.DATABASES["default"]["NAME"]),
            "TEST_VAR_DIR": str(tmp_path / "worker-var"),
            **s3_media.env,
        },
        queues=all_queues(),
        log_path=artifacts_dir / "s3-worker.log",
        name="s3",
    )
    _started_workers.append(worker)
    worker.start()
    yield worker
    worker.stop()


# ------------------------------------------------------------------------------
# Several hosts (network namespaces)
# ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hosts_stack() -> Iterator[Any]:
    """The application on five network namespaces (tests/hosts.py), for one module;
    skipped, in one line, where namespaces cannot be made. Torn down even when a test
    or the start failed."""
    from tests.hosts import HostsStack, unusable_reason

    reason = unusable_reason()
    if reason:
        pytest.skip(f"several-hosts tests skipped: {reason}")
    # Not under pytest's numbered temp folders: another session on the machine may
    # rotate those away while these hosts still write there.
    workdir = Path(tempfile.mkdtemp(prefix="uploads-hosts-"))
    stack = HostsStack(workdir)
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
        shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------
# Publishing, recorded
# ------------------------------------------------------------------------------
@pytest.fixture
def sent_tasks() -> Iterator[mock.MagicMock]:
    """Record what is published, while still publishing it to the test Redis."""
    with mock.patch.object(current_app, "send_task", wraps=current_app.send_task) as spy:
        yield spy


class PublishRecorder:
    """Stands in for ``publish_deliveries_now`` where ``housekeeping.replay`` looks it up:
    records what would have been sent and marks it enqueued, as a publish that worked."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, uuid.UUID]] = []
        self.calls = 0

    def __call__(self, deliveries: Any) -> list[int]:
        from events.models import Delivery

        self.calls += 1
        self.sent.extend((d.consumer, d.event_id) for d in deliveries)
        Delivery.objects.filter(pk__in=[d.pk for d in deliveries]).update(
            enqueued_at=timezone.now()
        )
        return [d.pk for d in deliveries]


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> PublishRecorder:
    """What replay (command or admin action) published, instead of publishing it."""
    recorder = PublishRecorder()
    monkeypatch.setattr("housekeeping.replay.publish_deliveries_now", recorder)
    return recorder


# ------------------------------------------------------------------------------
# Users
# ------------------------------------------------------------------------------
@pytest.fixture
def user(db: None) -> User:
    return User.objects.create_user("alice", "alice@example.com", "correct horse battery")


@pytest.fixture
def other_user(db: None) -> User:
    return User.objects.create_user("bob", "bob@example.com", "correct horse battery")


@pytest.fixture
def signed_in(client: Client, user: User) -> Client:
    """The test client, signed in as ``user``."""
    client.force_login(user)
    return client


@pytest.fixture
def delivery_viewer_client(client: Client, db: None) -> Client:
    """The test client, signed in as staff who may view events and deliveries, no more."""
    from django.contrib.auth.models import Permission

    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(
        Permission.objects.get(codename="view_delivery"),
        Permission.objects.get(codename="view_event"),
    )
    client.force_login(viewer)
    return client


# ------------------------------------------------------------------------------
# A webhook receiver on loopback
# ------------------------------------------------------------------------------
@pytest.fixture
def receiver() -> Iterator[Any]:
    """A scripted HTTP receiver on loopback (``tests.webhook_receiver``), closed after."""
    from tests.webhook_receiver import Receiver

    server = Receiver()
    yield server
    server.close()
