"""``bin/start`` as a newcomer runs it: Redis under honcho, Flower seeing every queue."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from config.deployment import all_queues
from tests.processes import ROOT, free_port, wait_for

pytestmark = pytest.mark.worker

FLOWER_AUTH = "operator:start-test-password"


def procfile_queues() -> set[str]:
    """Every queue a worker line of the Procfile that bin/start ran consumes."""
    path = ROOT / "var" / "Procfile.start"
    text = path.read_text() if path.exists() else ""
    return {q for found in re.findall(r" -Q (\S+)", text) for q in found.split(",")}


def flower_queues(port: int) -> set[str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/queues/length")
    request.add_header("Authorization", "Basic " + base64.b64encode(FLOWER_AUTH.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return {q["name"] for q in json.loads(response.read())["active_queues"]}
    except (OSError, urllib.error.HTTPError, ValueError, KeyError):
        return set()


def redis_answers(port: int) -> bool:
    result = subprocess.run(
        ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, timeout=5
    )
    return result.stdout.strip() == "PONG"


@pytest.mark.timeout(300)
def test_start_runs_redis_as_its_own_process_and_flower_lists_every_queue_at_once(
    tmp_path: Path, artifacts_dir: Path
):
    # given: no Redis on the broker's port, and private ports and files for everything
    redis_port, web_port, flower_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "FLOWER_"))}
    env |= {
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "EMAIL_URL": f"filemail:///{tmp_path / 'mail'}",
        "DJANGO_DEBUG": "true",
        "FLOWER_BASIC_AUTH": FLOWER_AUTH,
        "WEB_PORT": str(web_port),
        "FLOWER_PORT": str(flower_port),
        "REDIS_DATA_DIR": str(tmp_path / "redis"),
    }
    log_path = artifacts_dir / "bin-start.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            ["bin/start"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # when: the stack is up. Flower inspects the workers once, when it starts, and
        # never again by itself: the queues it lists then are all it ever will.
        def lists_every_queue() -> bool:
            listed = flower_queues(flower_port)
            return bool(listed) and listed == procfile_queues()

        wait_for(lists_every_queue, timeout=240, interval=1, what="Flower to list every queue")
        # every queue but the test-only probe consumer's: bin/start runs the base settings
        assert set(all_queues()) - {"probe"} == procfile_queues()
        assert redis_answers(redis_port)
        # Flower's own Prometheus metrics, as the README's scrape config reads them: with
        # Flower's credentials, and refused without them (Flower 2.2 alone serves anyone).
        metrics = urllib.request.Request(f"http://127.0.0.1:{flower_port}/metrics")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(metrics, timeout=5)
        assert refused.value.code == 401
        metrics.add_header(
            "Authorization", "Basic " + base64.b64encode(FLOWER_AUTH.encode()).decode()
        )
        with urllib.request.urlopen(metrics, timeout=5) as r:
            assert b"flower_worker_online" in r.read()

        # then: stopping bin/start stops its Redis too
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        assert not redis_answers(redis_port)
    finally:
        # honcho starts each process in its own session: only honcho itself can stop
        # them all, so it gets SIGTERM and time, never a SIGKILL that would orphan them.
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    output = log_path.read_text()
    assert "running one under honcho" in output
    assert "user operator; FLOWER_BASIC_AUTH holds user:password" in output
    assert "bin/manage createsuperuser" in output
