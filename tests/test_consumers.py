"""One declaration per consumer: the registry, and everything that starts workers from it.

The probe consumers are declared in the test settings only (``tests/probe/consumer.py``),
so they stand for a consumer app added with one ``INSTALLED_APPS`` line: the suite's
worker, the Procfile and the compose check must all pick them up from the registry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from celery import current_app
from django.core.management import call_command

from config.deployment import all_queues, procfile, worker_argv, worker_specs
from events.registry import all_consumers, get_consumer
from tests.probe.handlers import PROBE_EVENT
from tests.processes import ROOT, run_manage
from tests.test_compose import _production_workers, _services, worker_problems

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

    # and the compose check, fed this registry, says the compose file lacks its worker
    wanted = {spec.queue: spec.concurrency for spec in worker_specs()}
    assert worker_problems(_services(), wanted) == ["worker-probe is missing"]


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
