"""One correlation id follows an upload from the request through every consumer's logs."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid

import pytest
from django.core.files.base import ContentFile
from django.core.management import call_command

from config import correlation
from config.logging import CorrelationFilter, JsonFormatter
from events.models import Event
from events.registry import consumers_for
from tests.factories import publish_probe, settled, upload_text
from tests.processes import wait_for
from uploads.events import FILE_UPLOADED
from uploads.services import create_upload


def _record(message: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("uploads.test", logging.INFO, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


# ------------------------------------------------------------------------------
# Middleware
# ------------------------------------------------------------------------------
def test_request_keeps_a_sane_request_id_and_echoes_it(client, db):
    response = client.get("/health/", HTTP_X_REQUEST_ID="lb-7f3a.42")

    assert response["X-Request-ID"] == "lb-7f3a.42"


@pytest.mark.parametrize(
    "header", ["", "has space", "x" * 65, "new\nline", "<script>", "-starts-with-dash"]
)
def test_request_with_no_or_an_unsafe_request_id_gets_a_new_one(client, db, header):
    response = client.get("/health/", HTTP_X_REQUEST_ID=header)

    assert response["X-Request-ID"] != header
    assert len(response["X-Request-ID"]) == 32
    int(response["X-Request-ID"], 16)


def test_each_request_gets_its_own_id(client, db):
    first = client.get("/health/")["X-Request-ID"]
    second = client.get("/health/")["X-Request-ID"]

    assert first != second
    # and nothing of a request's id stays behind in this thread
    assert correlation.explicit_correlation_id() == ""


# ------------------------------------------------------------------------------
# Context and logging
# ------------------------------------------------------------------------------
def test_scope_sets_and_restores_the_id():
    with correlation.correlation_scope("outer"):
        with correlation.correlation_scope("inner") as inner:
            assert inner == "inner" == correlation.get_correlation_id()
        assert correlation.get_correlation_id() == "outer"
    assert correlation.explicit_correlation_id() == ""


def test_outside_any_request_a_process_has_one_id_for_all_its_work():
    # A management command has no request: everything it does shares one id.
    assert correlation.get_correlation_id() == correlation.get_correlation_id() != ""
    assert correlation.get_correlation_id() == correlation.process_correlation_id()


def test_filter_adds_the_correlation_and_task_ids_to_every_record():
    record = _record()
    token = correlation.set_current_task("task-1", "audit.handle_event")
    try:
        with correlation.correlation_scope("req-1"):
            assert CorrelationFilter().filter(record) is True
    finally:
        correlation.reset_current_task(token)

    assert record.correlation_id == "req-1"
    assert record.task_id == "task-1"
    assert record.task_name == "audit.handle_event"
    assert record.task_label == " audit.handle_event[task-1]"


def test_json_formatter_writes_one_object_per_line_with_ids_and_extra_fields():
    record = _record("uploaded %s\nsecond line", "notes.txt", upload_id=7)
    with correlation.correlation_scope("req-2"):
        CorrelationFilter().filter(record)

    line = JsonFormatter().format(record)

    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "uploaded notes.txt\nsecond line"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "uploads.test"
    assert entry["correlation_id"] == "req-2"
    assert entry["upload_id"] == 7
    assert entry["time"].endswith("+00:00")
    assert "task_id" not in entry  # not in a task


def test_json_formatter_keeps_the_traceback_and_odd_values():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    record.odd = object()
    CorrelationFilter().filter(record)

    entry = json.loads(JsonFormatter().format(record))

    assert "ValueError: boom" in entry["exc_info"]
    assert entry["odd"].startswith("<object object")


def test_a_management_command_logs_json_lines_with_its_own_id(subprocesses):
    # given LOG_FORMAT=json, when a command logs twice
    code = "import logging; log = logging.getLogger('cmd'); log.warning('one'); log.warning('two')"
    result = subprocesses.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        env={**os.environ, "LOG_FORMAT": "json", "DJANGO_SETTINGS_MODULE": "config.settings.test"},
    )

    # then each line is a JSON object and both carry the command's one id
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert [e["message"] for e in entries] == ["one", "two"]
    assert entries[0]["correlation_id"] == entries[1]["correlation_id"] != ""


# ------------------------------------------------------------------------------
# Across processes
# ------------------------------------------------------------------------------
def _worker_lines(live_worker, needle: str) -> list[str]:
    return [line for line in live_worker.log_path.read_text().splitlines() if needle in line]


@pytest.mark.django_db(transaction=True)
def test_upload_is_traceable_from_request_to_every_consumer_log_line(live_worker, user):
    request_id = f"req-{uuid.uuid4().hex[:12]}"

    # when an upload happens in a request with that id
    with correlation.correlation_scope(request_id):
        upload = create_upload(
            owner=user,
            file=ContentFile(b"trace me", name="trace.txt"),
            correlation_id=correlation.get_correlation_id(),
        )

    # then the event stores it, and each consumer's task logs it with its own task name
    event = Event.objects.get(aggregate_id=str(upload.pk), type="file.uploaded")
    assert event.correlation_id == request_id
    wait_for(lambda: settled(event), what="deliveries")
    names = {consumer.task_name for consumer in consumers_for(FILE_UPLOADED)}
    wait_for(
        lambda: all(_worker_lines(live_worker, f"[{request_id} {n}[") for n in names),
        what=f"worker log lines with {request_id}",
    )
    succeeded = _worker_lines(live_worker, request_id)
    assert all("succeeded" in line for line in succeeded if "succeeded" in line)


@pytest.mark.django_db(transaction=True)
def test_relayed_delivery_carries_the_events_correlation_id(live_worker, redis_server, user):
    # given an upload made while the broker was down, so only the relay publishes it
    request_id = f"req-{uuid.uuid4().hex[:12]}"
    redis_server.stop()
    try:
        upload = create_upload(
            owner=user,
            file=ContentFile(b"relay me", name="relay.txt"),
            correlation_id=request_id,
        )
    finally:
        redis_server.start()
    event = Event.objects.get(aggregate_id=str(upload.pk), type="file.uploaded")

    # when the relay, outside any request, publishes it
    time.sleep(2.1)  # past the grace period in which the on-commit publish owns a delivery
    call_command("relay_outbox", "--once")

    # then the consumers' log lines carry the event's id, not the relay's
    assert set(wait_for(lambda: settled(event), what="relayed deliveries").values()) == {"done"}
    wait_for(
        lambda: _worker_lines(live_worker, f"[{request_id} audit.handle_event["),
        what=f"worker log lines with {request_id}",
    )


@pytest.mark.django_db(transaction=True)
def test_retries_of_a_task_keep_its_correlation_id(live_worker, running_relay):
    request_id = f"req-{uuid.uuid4().hex[:12]}"
    with correlation.correlation_scope(request_id):
        event = publish_probe(transient_failures={"probe": 2})

    assert wait_for(lambda: settled(event), what="retries")["probe"] == "done"
    lines = wait_for(
        lambda: [
            line
            for line in _worker_lines(live_worker, f"[{request_id} probe.handle_event[")
            if "retry" in line.lower() or "succeeded" in line
        ],
        what="log lines of every try",
    )
    assert sum("succeeded" in line for line in lines) >= 1
    assert sum("retry" in line.lower() for line in lines) >= 2


@pytest.mark.django_db(transaction=True)
def test_upload_in_a_request_scope_defaults_to_the_request_id(user):
    with correlation.correlation_scope("req-default"):
        upload = upload_text(user)

    event = Event.objects.get(aggregate_id=str(upload.pk))
    assert event.correlation_id == "req-default"
