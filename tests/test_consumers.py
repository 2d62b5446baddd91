"""One declaration per consumer: the registry, and everything that starts workers from it.

The probe consumers are declared in the test settings only (``tests/probe/consumer.py``),
so they stand for a consumer app added with one ``INSTALLED_APPS`` line: the suite's
worker, the Procfile and the compose check must all pick them up from the registry.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from celery import current_app
from django.core.management import call_command

from config.deployment import all_queues, procfile, worker_argv, worker_specs
from events.models import Delivery
from events.registry import all_consumers, get_consumer
from tests.probe.handlers import PROBE_EVENT
from tests.processes import ROOT, RedisServer, free_port, run_manage, wait_for
from tests.scratch import SCRATCH_EVENT, SCRATCH_QUEUE
from tests.test_compose import _production_workers, _services, registry_workers, worker_problems

KEYS = {
    "name",
    "queue",
    "event_types",
    "max_attempts",
    "time_limit",
    "soft_time_limit",
    "concurrency",
}


def test_consumers_json_lists_every_registered_consumer_with_what_deployment_needs(capsys):
    call_command("consumers", "--json")

    listed = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in listed] == [c.name for c in all_consumers()]
    assert all(set(row) == KEYS for row in listed)
    probe = next(row for row in listed if row["name"] == "probe")
    assert probe == {
        "name": "probe",
        "queue": "probe",
        "event_types": [PROBE_EVENT],
        "max_attempts": 4,
        "time_limit": 5,
        "soft_time_limit": 4,
        "concurrency": 2,
    }


def test_consumers_table_has_a_row_per_consumer(capsys):
    call_command("consumers")

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["name", "queue"]
    assert [line.split()[0] for line in lines[1:]] == [c.name for c in all_consumers()]


def test_consumers_refuses_json_and_procfile_together():
    result = run_manage("consumers", "--json", "--procfile")

    assert result.returncode != 0
    assert "not allowed with argument" in result.stderr


def test_a_consumer_task_is_built_for_every_declared_consumer():
    for consumer in all_consumers():
        task = current_app.tasks[consumer.task_name]
        assert (task.queue, task.time_limit, task.soft_time_limit) == (
            consumer.queue,
            consumer.time_limit,
            consumer.soft_time_limit,
        )


def test_consumers_sharing_a_queue_share_one_worker_with_the_largest_concurrency():
    probe_workers = [spec for spec in worker_specs() if spec.queue == "probe"]

    assert len(probe_workers) == 1
    assert probe_workers[0].concurrency == max(
        get_consumer(name).concurrency for name in ("probe", "probe_peer")
    )
    assert worker_specs()[-1].queue == "events"  # housekeeping, declared by no consumer


def test_the_registry_module_is_plain_data():
    # Imported alone, it pulls in neither Celery, nor Django, nor the tasks that use it.
    code = (
        "import sys, events.registry; "
        "print([m for m in sys.modules if m.split('.')[0] in ('celery', 'django') "
        "or m == 'events.tasks'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"


# ------------------------------------------------------------------------------
# Proof: a consumer app added in the (test) settings is started everywhere
# ------------------------------------------------------------------------------
@pytest.mark.worker
def test_a_consumer_added_in_settings_only_is_picked_up_by_workers_procfile_and_compose(
    live_worker,
):
    # given the probe consumer, which only the test settings install
    assert "probe" in {c.queue for c in all_consumers()}

    # then the suite's worker consumes its queue, as the registry says
    assert "probe" in all_queues()
    active = current_app.control.inspect([live_worker.hostname], timeout=5).active_queues()
    assert {q["name"] for q in active[live_worker.hostname]} == set(all_queues())

    # and the Procfile starts a worker for it, with the command line built in one place
    lines = dict(line.split(": ", 1) for line in procfile().splitlines())
    argv = worker_argv(
        queues=["probe"], concurrency=2, hostname="probe@%h", program=[".venv/bin/celery"]
    )
    assert lines["probe"] == " ".join(argv)
    assert {"web", "beat", "flower", *all_queues()} == set(lines)

    # and the compose stack's workers service, run with these settings, starts it too
    assert worker_problems(_services()) == []
    assert registry_workers("config.settings.test")["probe"] == worker_argv(
        queues=["probe"], concurrency=2, hostname="probe@%h", program=["celery"]
    )


def test_bin_start_runs_the_procfile_generated_from_the_registry():
    start = (ROOT / "bin" / "start").read_text()

    assert "manage.py consumers --procfile)" in start
    assert not (ROOT / "Procfile").exists()  # no second, hand-written list to drift


def test_procfile_of_the_production_settings_has_a_worker_per_production_queue_only():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.base"}
    result = subprocess.run(
        [sys.executable, "manage.py", "consumers", "--procfile"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    names = [line.split(":", 1)[0] for line in result.stdout.splitlines()]
    assert names == ["web", *_production_workers(), "beat", "flower"]
    assert "probe" not in names


# ------------------------------------------------------------------------------
# Proof: a consumer app that is one INSTALLED_APPS line runs on a live worker, in
# bin/start's process list and in the compose stack's workers, with nothing else edited
# ------------------------------------------------------------------------------
SCRATCH_SETTINGS = "tests.scratch.settings"


def scratch_env(**extra: str) -> dict[str, str]:
    """The environment of a process that runs with the scratch consumer app installed."""
    from django.conf import settings

    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": SCRATCH_SETTINGS,
        "EVENTS_TEST_DATABASE_NAME": str(settings.DATABASES["default"]["NAME"]),
        **extra,
    }


def manage(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return run_manage(*args, timeout=timeout, env=env)


def test_the_scratch_consumer_exists_only_where_its_settings_install_it():
    assert "scratch" not in {c.name for c in all_consumers()}  # this process: test settings
    listed = json.loads(manage(scratch_env(), "consumers", "--json").stdout)
    assert [row["queue"] for row in listed if row["name"] == "scratch"] == [SCRATCH_QUEUE]


def test_bin_start_runs_a_worker_for_a_consumer_app_added_in_settings(tmp_path):
    env = scratch_env(
        TEST_VAR_DIR=str(tmp_path / "var"),
        CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0",
        REDIS_DATA_DIR=str(tmp_path / "redis"),
    )
    env.pop("DATABASE_URL", None)  # --print-procfile touches no database; keep it that way

    result = subprocess.run(
        ["bin/start", "--print-procfile"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    processes = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    scratch = worker_argv(
        queues=[SCRATCH_QUEUE], concurrency=1, hostname="scratch@%h", program=[".venv/bin/celery"]
    )
    assert processes[SCRATCH_QUEUE] == " ".join(scratch)
    assert set(processes) == {"redis", "web", *all_queues(), SCRATCH_QUEUE, "beat", "flower"}
    # Flower waits for every worker, the scratch one included
    assert processes["flower"].startswith(f"bin/wait-for-workers {len(all_queues()) + 1} ")


@pytest.mark.worker
@pytest.mark.timeout(300)
def test_the_compose_workers_run_a_consumer_app_added_in_settings_and_it_handles_its_event(
    tmp_path, transactional_db, artifacts_dir
):
    # given a private broker, and the scratch app installed by its settings module only
    broker = RedisServer(tmp_path / "redis")
    broker.start()
    effects = tmp_path / "effects"
    env = scratch_env(TEST_CELERY_BROKER_URL=broker.url, SCRATCH_EFFECTS_DIR=str(effects))
    log_path = artifacts_dir / "run-workers-scratch.log"

    # when the compose workers service's command runs with those settings
    assert registry_workers(SCRATCH_SETTINGS)[SCRATCH_QUEUE] == worker_argv(
        queues=[SCRATCH_QUEUE], concurrency=1, hostname="scratch@%h", program=["celery"]
    )
    assert manage(env, "consumers", "--ping-workers", "--timeout", "1").returncode == 1
    with log_path.open("w") as log:
        workers = subprocess.Popen(
            [sys.executable, "manage.py", "consumers", "--run-workers"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # then its healthcheck passes once every worker answers, the scratch one included
        wait_for(
            lambda: manage(env, "consumers", "--ping-workers", "--timeout", "2").returncode == 0,
            timeout=180,
            interval=1,
            what=f"every worker of consumers --run-workers to answer (log: {log_path})",
        )
        scratch_node = f"scratch@{socket.gethostname()}"
        inspect_queues = ["inspect", "active_queues", "-d", scratch_node, "--json"]
        inspected = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "config", *inspect_queues],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        queues = json.loads(inspected.stdout.strip().splitlines()[-1])
        assert [q["name"] for q in queues[scratch_node]] == [SCRATCH_QUEUE]

        # and an event the scratch consumer subscribes to, recorded by a process with the
        # scratch settings, is done by that worker: one side effect, no more
        recorded = manage(
            env,
            "shell",
            "-c",
            "from django.db import transaction\n"
            "from events.outbox import record_event\n"
            "with transaction.atomic():\n"
            f"    event = record_event(event_type={SCRATCH_EVENT!r}, aggregate_id='scratch',"
            " payload={'key': 'first'})\n"
            "print(event.id)",
        )
        assert recorded.returncode == 0, recorded.stderr
        event_id = recorded.stdout.split()[-1]
        delivery = Delivery.objects.get(event_id=event_id, consumer="scratch")
        wait_for(
            lambda: Delivery.objects.get(pk=delivery.pk).state == Delivery.State.DONE,
            timeout=60,
            interval=0.3,
            what="the scratch delivery to be done",
        )
        assert (effects / "effects.log").read_text().splitlines() == [f"{event_id} first"]
    finally:
        # SIGTERM, as docker stop sends it: each worker stops warm, then the command exits 0
        workers.send_signal(signal.SIGTERM)
        try:
            workers.wait(timeout=90)
        finally:
            if workers.poll() is None:
                os.killpg(workers.pid, signal.SIGKILL)
            broker.stop()
    output = log_path.read_text()
    assert workers.returncode == 0, output[-3000:]
    assert "SIGTERM received; warm shutdown of every worker" in output
    assert output.count("worker exited with status 0") == len(all_queues()) + 1


# Stands in for ``celery ... worker -Q <queue>`` below: the audit worker fails once every
# other worker runs; the others note the SIGTERM they get and exit.
FAKE_WORKER = """
import signal, sys, time
from pathlib import Path

folder, queues = Path(sys.argv[1]), sys.argv[2].split(",")
queue = sys.argv[sys.argv.index("-Q") + 1]

def on_term(signum, frame):
    (folder / queue).write_text("SIGTERM")
    sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
(folder / queue).write_text("running")
if queue == "audit":
    while not all((folder / q).exists() for q in queues):
        time.sleep(0.05)
    sys.exit(3)
while True:
    time.sleep(0.1)
"""


def test_a_worker_that_stops_on_its_own_stops_the_others_warm_and_fails_run_workers(tmp_path):
    queues = ",".join(all_queues())
    code = (
        "import sys, django; django.setup(); from config.deployment import run_workers; "
        f"sys.exit(run_workers(program=[sys.executable, '-c', {FAKE_WORKER!r}, "
        f"{str(tmp_path)!r}, {queues!r}]))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"}

    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 3, result.stdout + result.stderr
    assert "the audit worker stopped on its own" in result.stdout
    others = [queue for queue in all_queues() if queue != "audit"]
    assert {queue: (tmp_path / queue).read_text() for queue in others} == dict.fromkeys(
        others, "SIGTERM"
    )
