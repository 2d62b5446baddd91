"""Flower, as operators run it: behind basic auth, showing each consumer's tasks by name."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import current_app

from events.models import Delivery, Event
from events.registry import consumers_for
from tests.factories import upload_text
from tests.processes import ChildProcesses, free_port, wait_for
from uploads.events import FILE_UPLOADED

pytestmark = pytest.mark.django_db(transaction=True)

CREDENTIALS = "operator:flower-test-password"


@dataclass
class FlowerProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def get(self, path: str, *, auth: str | None = CREDENTIALS) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path)
        if auth:
            request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def tasks(self) -> dict[str, Any]:
        status, body = self.get("/api/tasks")
        return json.loads(body) if status == 200 else {}


def _flower_env(broker_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    return {
        **env,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "TEST_CELERY_BROKER_URL": broker_url,
        **extra,
    }


@pytest.fixture
def flower(
    live_worker, redis_server, artifacts_dir: Path, subprocesses: ChildProcesses
) -> Iterator[FlowerProcess]:
    """``celery -A config flower`` on a free port, against the test Redis and live worker."""
    port = free_port()
    log_path = artifacts_dir / "flower.log"
    process = subprocesses.start(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        env=_flower_env(redis_server.url, FLOWER_BASIC_AUTH=CREDENTIALS),
        log_path=log_path,
    )
    running = FlowerProcess(f"http://127.0.0.1:{port}", process, log_path)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"flower exited; see {log_path}")
        return running.get("/healthcheck", auth=None)[0] == 200

    try:
        wait_for(up, timeout=60, interval=0.3, what=f"flower on port {port} (log: {log_path})")
        yield running
    finally:
        subprocesses.stop(process)
        # Flower switched task events on in the shared worker; other tests measure it off.
        current_app.control.disable_events(destination=[live_worker.hostname])


def test_flower_refuses_requests_without_credentials(flower):
    assert flower.get("/api/tasks", auth=None)[0] == 401
    assert flower.get("/api/workers", auth=None)[0] == 401
    assert flower.get("/", auth=None)[0] == 401
    assert flower.get("/api/tasks", auth="operator:wrong")[0] == 401


def test_flower_lists_each_consumers_task_with_ids_only(flower, user):
    # given Flower has switched task events on in the running worker (it asks every few
    # seconds), when uploads happen: keep uploading until one's tasks show up
    secret_text = "the contents of a private file"
    seen: dict[str, Any] = {}

    def consumer_tasks_of_a_new_upload() -> bool:
        upload = upload_text(user, secret_text, name="private.txt")
        event = Event.objects.get(aggregate_id=str(upload.pk), type="file.uploaded")
        delivery_ids = dict(Delivery.objects.filter(event=event).values_list("consumer", "pk"))

        def found() -> bool:
            mine = {
                task_id: task
                for task_id, task in flower.tasks().items()
                if str(event.id) in (task.get("kwargs") or "")
            }
            if {task["name"] for task in mine.values()} == {
                c.task_name for c in consumers_for(FILE_UPLOADED)
            } and all(task["state"] == "SUCCESS" for task in mine.values()):
                seen.update(event=event, deliveries=delivery_ids, tasks=mine)
                return True
            return False

        try:
            return wait_for(found, timeout=5, interval=0.3, what="tasks in flower")
        except AssertionError:
            return False

    wait_for(
        consumer_tasks_of_a_new_upload,
        timeout=60,
        interval=0,
        what=(
            "consumer tasks in Flower (a worker started with --without-gossip and "
            "--without-heartbeat has no event dispatcher for Flower to switch on; "
            "see the worker log)"
        ),
    )

    # then each task is named for its consumer and shows the delivery, event id and type
    event = seen["event"]
    for task in seen["tasks"].values():
        consumer = task["name"].split(".")[0]
        assert task["args"] == "()"
        assert task["kwargs"] == repr(
            {
                "delivery_id": seen["deliveries"][consumer],
                "event_id": str(event.id),
                "event_type": "file.uploaded",
            }
        )
        # and nothing of the file or its owner beyond ids
        text = json.dumps(task)
        assert secret_text not in text
        assert "private.txt" not in text
        assert user.email not in text
        assert user.username not in text


@pytest.mark.parametrize("debug", ["false", "true"])
def test_flower_will_not_start_without_basic_auth_debug_or_not(redis_server, subprocesses, debug):
    result = subprocesses.run(
        [sys.executable, "-m", "celery", "-A", "config", "flower", f"--port={free_port()}"],
        env=_flower_env(redis_server.url, DJANGO_DEBUG=debug),
    )

    assert result.returncode != 0
    assert "flower refused to start" in result.stderr
    assert "FLOWER_BASIC_AUTH" in result.stderr


def test_flower_will_not_start_with_malformed_basic_auth(redis_server, subprocesses):
    result = subprocesses.run(
        [sys.executable, "-m", "celery", "-A", "config", "flower", f"--port={free_port()}"],
        env=_flower_env(redis_server.url, FLOWER_BASIC_AUTH="operator-without-password"),
    )

    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH must be user:password" in result.stderr
