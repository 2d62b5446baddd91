"""Bulk redrive: the filter and its count, the chunked run, the audit record, the admin page.

Most tests run inside the test transaction: what a redrive publishes is recorded instead
of sent, and the task that would run it is caught. The last test redrives 10,000 dead
deliveries through a real worker, which runs the task and claims every delivery.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.contrib.auth.models import Permission, User
from django.urls import reverse

import housekeeping.redrive
from audit.models import AuditEntry
from audit.services import verify_chain
from events.models import Delivery, Event
from events.testing import drain
from housekeeping.events import OPERATOR_REDRIVE
from housekeeping.redrive import (
    RedriveFilter,
    RedriveNotStarted,
    count_redrive,
    run_bulk_redrive,
    start_bulk_redrive,
)
from housekeeping.replay import redeliver_deliveries
from housekeeping.tasks import bulk_redrive_task
from tests.probe.handlers import PROBE_EVENT
from tests.processes import CeleryWorker, RedisServer, wait_for
from tests.test_faults_worker import queued_delivery_ids

T0 = dt.datetime(2026, 11, 30, 14, 0, tzinfo=dt.UTC)


# ------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------
def dead_probe_deliveries(
    count: int, *, error: str = "boom", at: dt.datetime = T0, consumer: str = "probe"
) -> list[Event]:
    """``count`` stored probe events a second apart from ``at``: ``consumer``'s delivery dead
    with ``error`` after 4 attempts, the other probe consumer's done. Written in bulk."""
    events = [
        Event(
            id=uuid.uuid4(),
            type=PROBE_EVENT,
            version=1,
            occurred_at=at + dt.timedelta(seconds=i),
            aggregate_id="probe",
            payload={"key": uuid.uuid4().hex},
        )
        for i in range(count)
    ]
    Event.objects.bulk_create(events, batch_size=500)
    other = "probe_peer" if consumer == "probe" else "probe"
    Delivery.objects.bulk_create(
        [
            Delivery(event=e, consumer=consumer, state="dead", attempts=4, last_error=error)
            for e in events
        ]
        + [Delivery(event=e, consumer=other, state="done", attempts=1) for e in events],
        batch_size=1000,
    )
    return events


class TaskCatcher:
    """Stands in for ``send_redrive_task_now``: records the task instead of sending it."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> None:
        self.sent.append(kwargs)


@pytest.fixture
def redrive_tasks(monkeypatch: pytest.MonkeyPatch) -> TaskCatcher:
    catcher = TaskCatcher()
    monkeypatch.setattr(housekeeping.redrive, "send_redrive_task_now", catcher)
    return catcher


@pytest.fixture
def operator(db: None) -> User:
    return User.objects.create_superuser("ops", "ops@example.com", "correct horse battery")


# ------------------------------------------------------------------------------
# The filter and its count
# ------------------------------------------------------------------------------
def test_count_selects_by_consumer_state_event_time_and_error_text(db):
    dead_probe_deliveries(3, error="SMTP Timeout after 30 s", at=T0)
    dead_probe_deliveries(2, error="connection refused", at=T0 + dt.timedelta(minutes=10))
    dead_probe_deliveries(4, error="timeout", at=T0 + dt.timedelta(hours=2), consumer="probe_peer")

    def count(**filters: Any) -> dict[tuple[str, str], int]:
        return count_redrive(RedriveFilter(**filters)).by_consumer_state

    assert count() == {("probe", "dead"): 5, ("probe_peer", "dead"): 4}
    assert count(consumers=("probe",)) == {("probe", "dead"): 5}
    assert count(error_contains="TIMEOUT") == {("probe", "dead"): 3, ("probe_peer", "dead"): 4}
    assert count(since=T0 + dt.timedelta(minutes=5), until=T0 + dt.timedelta(hours=1)) == {
        ("probe", "dead"): 2
    }
    assert count(states=("done",), consumers=("probe_peer",)) == {("probe_peer", "done"): 5}
    everything = count_redrive(RedriveFilter(states=("dead", "done")))
    assert everything.total == 18
    assert everything.up_to_pk == Delivery.objects.order_by("-pk").values_list("pk", flat=True)[0]


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"consumers": ("nosuch",)}, "nosuch"),
        ({"states": ("running",)}, "states must be some of"),
        ({"states": ()}, "states must be some of"),
        ({"since": T0, "until": T0}, "since must be before until"),
    ],
)
def test_a_bad_filter_is_refused(filters, message):
    with pytest.raises((ValueError, LookupError), match=message):
        RedriveFilter(**filters)


def test_filter_round_trips_through_json():
    redrive = RedriveFilter(
        consumers=("probe",),
        states=("dead", "retrying"),
        since=T0,
        until=T0 + dt.timedelta(hours=1),
        error_contains="timeout",
        up_to_pk=42,
    )
    assert RedriveFilter.from_json(json.loads(json.dumps(redrive.to_json()))) == redrive


# ------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------
def test_run_goes_in_chunks_and_leaves_what_changed_after_the_count(
    db, published, django_capture_on_commit_callbacks
):
    # given 7 dead deliveries, counted (which pins the selection)
    events = dead_probe_deliveries(7)
    redrive = RedriveFilter(consumers=("probe",))
    counted = count_redrive(redrive)
    assert counted.total == 7
    # and, after the count, one finished by a worker and one more that died
    Delivery.objects.filter(event=events[0], consumer="probe").update(state="done")
    dead_probe_deliveries(1)

    # when the redrive runs, 3 at a time
    with django_capture_on_commit_callbacks(execute=True):
        report = run_bulk_redrive(
            redrive=RedriveFilter(consumers=("probe",), up_to_pk=counted.up_to_pk), chunk_size=3
        )

    # then the 6 still dead that were counted are reset and published, chunk by chunk
    assert report.finished
    assert report.chunks == 2  # the done one left the selection: 6 ids in chunks of 3
    assert report.selected == 6
    assert published.calls == 2
    assert sorted(e for _, e in published.sent) == sorted(e.id for e in events[1:])
    assert Delivery.objects.filter(consumer="probe", state="pending").count() == 6
    # the one finished meanwhile stays done; the one that died after the count stays dead
    assert Delivery.objects.get(event=events[0], consumer="probe").state == "done"
    assert Delivery.objects.filter(consumer="probe", state="dead").count() == 1
    # attempts and the last error are kept (the history stays readable)
    assert set(
        Delivery.objects.filter(consumer="probe", state="pending").values_list(
            "attempts", "last_error"
        )
    ) == {(4, "boom")}


def test_a_delivery_no_longer_in_a_selected_state_under_the_lock_is_left_alone(
    db, published, django_capture_on_commit_callbacks
):
    # given ids read while both were dead, one of which a worker has finished since
    events = dead_probe_deliveries(2)
    ids = list(Delivery.objects.filter(consumer="probe").values_list("pk", flat=True))
    Delivery.objects.filter(event=events[0], consumer="probe").update(state="done")

    # when the chunk is locked and planned with the selected states
    with django_capture_on_commit_callbacks(execute=True):
        report = redeliver_deliveries(
            deliveries=Delivery.objects.filter(pk__in=ids), force=True, states=("dead",)
        )

    # then only the one still dead is redriven; the done one is not run again
    assert report.selected == 1
    assert published.sent == [("probe", events[1].id)]
    assert Delivery.objects.get(event=events[0], consumer="probe").state == "done"


def test_task_that_runs_out_of_time_sends_the_rest_from_where_it_stopped(
    db, published, redrive_tasks, monkeypatch, django_capture_on_commit_callbacks
):
    dead_probe_deliveries(5)
    redrive = RedriveFilter(consumers=("probe",), up_to_pk=count_redrive(RedriveFilter()).up_to_pk)
    # A budget already used up: each run does one chunk, then hands over.
    monkeypatch.setattr("housekeeping.tasks.TASK_TIME_BUDGET_SECONDS", 0)
    monkeypatch.setattr("housekeeping.tasks.REDRIVE_CHUNK_SIZE", 2)
    monkeypatch.setattr("housekeeping.tasks.send_redrive_task_now", redrive_tasks)

    kwargs: dict[str, Any] = {"redrive_id": "r1", "redrive": redrive.to_json(), "after_pk": 0}
    runs = 0
    while True:
        with django_capture_on_commit_callbacks(execute=True):
            bulk_redrive_task.run(**kwargs)
        runs += 1
        if len(redrive_tasks.sent) < runs:
            break
        sent = redrive_tasks.sent[-1]
        kwargs = {**sent, "redrive": sent["redrive"].to_json()}

    assert runs == 3  # 2 + 2 + 1
    assert len(published.sent) == 5
    assert not Delivery.objects.filter(consumer="probe", state="dead").exists()


# ------------------------------------------------------------------------------
# Starting it: the audit record
# ------------------------------------------------------------------------------
def test_start_records_the_operator_and_filter_and_the_audit_log_chains_it(
    transactional_db, operator, redrive_tasks, monkeypatch
):
    # given (transactional: starting must be the outermost transaction; nothing is
    # published, so a worker left running by an earlier test cannot take the event)
    monkeypatch.setattr("events.outbox.publish_committed", lambda *args: None)
    dead_probe_deliveries(3, error="timeout")
    redrive = RedriveFilter(consumers=("probe",), error_contains="timeout", since=T0)
    counted = count_redrive(redrive)

    # when
    redrive_id = start_bulk_redrive(
        redrive=dataclasses.replace(redrive, up_to_pk=counted.up_to_pk),
        operator=operator,
        confirmed_count=counted.total,
    )

    # then the task was sent with the pinned filter
    assert [t["redrive_id"] for t in redrive_tasks.sent] == [redrive_id]
    assert redrive_tasks.sent[0]["redrive"].up_to_pk == counted.up_to_pk
    # and the event is recorded, for the audit consumer only
    event = Event.objects.get(type=OPERATOR_REDRIVE)
    assert event.actor == operator.pk
    assert event.aggregate_id == str(redrive_id)
    assert list(event.deliveries.values_list("consumer", flat=True)) == ["audit"]
    # which chains it with the operator and the filter
    assert [o.outcome for o in drain("audit")] == ["done"]
    entry = AuditEntry.objects.get(event_id=event.id)
    assert entry.event_type == OPERATOR_REDRIVE
    assert entry.actor == operator.pk
    assert entry.detail["operator"] == "ops"
    assert entry.detail["confirmed_count"] == 3
    assert entry.detail["filter"]["error_contains"] == "timeout"
    assert entry.detail["filter"]["consumers"] == ["probe"]
    assert entry.detail["filter"]["since"] == T0.isoformat()
    assert verify_chain().intact


def test_editing_the_recorded_filter_breaks_the_audit_chain(
    transactional_db, operator, redrive_tasks, monkeypatch
):
    # nothing is published: a worker left running by an earlier test cannot take it
    monkeypatch.setattr("events.outbox.publish_committed", lambda *args: None)
    start_bulk_redrive(redrive=RedriveFilter(), operator=operator, confirmed_count=0)
    drain("audit")
    entry = AuditEntry.objects.get(event_type=OPERATOR_REDRIVE)
    AuditEntry.objects.filter(pk=entry.pk).update(
        detail={**entry.detail, "filter": {**entry.detail["filter"], "error_contains": "x"}}
    )

    report = verify_chain()

    assert not report.intact
    assert "content does not match its hash" in report.reason


def test_start_with_the_broker_down_says_so_and_resends_nothing(
    transactional_db, operator, monkeypatch
):
    dead_probe_deliveries(2)

    def broker_down(**kwargs: Any) -> None:
        raise ConnectionRefusedError("connection refused")

    monkeypatch.setattr(housekeeping.redrive, "send_redrive_task_now", broker_down)

    with pytest.raises(RedriveNotStarted, match="broker is unreachable"):
        start_bulk_redrive(redrive=RedriveFilter(), operator=operator, confirmed_count=2)

    assert Delivery.objects.filter(consumer="probe", state="dead").count() == 2


def test_start_inside_a_transaction_is_refused(db, operator, redrive_tasks):
    with pytest.raises(RuntimeError, match="must not run inside a transaction"):
        start_bulk_redrive(redrive=RedriveFilter(), operator=operator, confirmed_count=0)
    assert redrive_tasks.sent == []


# ------------------------------------------------------------------------------
# Admin
# ------------------------------------------------------------------------------
BULK_URL = "admin:events_delivery_bulk_redrive"


def test_admin_counts_first_and_changes_nothing(admin_client, redrive_tasks):
    dead_probe_deliveries(3, error="SMTP timeout")
    dead_probe_deliveries(2, error="refused")

    response = admin_client.get(
        reverse(BULK_URL),
        {"consumers": ["probe"], "states": ["dead"], "error_contains": "timeout", "count": "1"},
    )

    page = response.content.decode()
    assert response.status_code == 200
    assert response.context["count"].total == 3
    assert 'id="redrive-total">3<' in page
    assert "Redrive these 3 deliveries" in page
    assert "last error containing &#x27;timeout&#x27;" in page
    assert Delivery.objects.filter(state="dead").count() == 5
    assert redrive_tasks.sent == []
    assert not Event.objects.filter(type=OPERATOR_REDRIVE).exists()


def test_admin_says_when_nothing_matches(admin_client, redrive_tasks):
    response = admin_client.get(reverse(BULK_URL), {"states": ["dead"], "count": "1"})

    assert "No delivery matches: nothing to redrive." in response.content.decode()
    assert "redrive-confirm" not in response.content.decode()


def test_admin_shows_the_form_errors(admin_client):
    response = admin_client.get(
        reverse(BULK_URL),
        {"states": ["dead"], "since": "2026-12-01T10:00", "until": "2026-12-01T09:00"},
    )

    assert response.context["count"] is None
    assert "must be before" in response.content.decode()


def test_admin_confirmation_starts_the_counted_redrive(
    transactional_db, client, operator, redrive_tasks
):
    client.force_login(operator)
    dead_probe_deliveries(3, error="SMTP timeout")
    counted = client.get(
        reverse(BULK_URL), {"states": ["dead"], "consumers": ["probe"], "count": "1"}
    )
    confirm = counted.context["confirm"]
    data = {
        name: confirm[name].value()
        for name in ("consumers", "states", "error_contains", "up_to_pk", "confirmed_count")
    }

    response = client.post(reverse(BULK_URL), data, follow=True)

    message = str(next(iter(response.context["messages"])))
    assert "started: 3 deliveries (dead deliveries of probe)" in message
    assert len(redrive_tasks.sent) == 1
    assert redrive_tasks.sent[0]["redrive"] == RedriveFilter(
        consumers=("probe",), up_to_pk=counted.context["count"].up_to_pk
    )
    event = Event.objects.get(type=OPERATOR_REDRIVE)
    assert event.payload["confirmed_count"] == 3
    assert event.actor == operator.pk


def test_admin_bulk_redrive_needs_the_change_permission(db, client, redrive_tasks):
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_delivery"))
    client.force_login(viewer)

    assert client.get(reverse(BULK_URL)).status_code == 403
    assert client.post(reverse(BULK_URL), {"states": ["dead"], "up_to_pk": 1}).status_code == 403
    assert redrive_tasks.sent == []


def test_delivery_list_links_to_bulk_redrive(admin_client):
    page = admin_client.get(reverse("admin:events_delivery_changelist")).content.decode()

    assert reverse(BULK_URL) in page


# ------------------------------------------------------------------------------
# 10,000 through a real worker
# ------------------------------------------------------------------------------
@pytest.fixture
def events_only_worker(
    live_worker: CeleryWorker, make_worker: Callable[..., CeleryWorker], redis_server: RedisServer
) -> Iterator[CeleryWorker]:
    """A worker on the ``events`` queue alone, where the redrive task runs; the consumers'
    workers are down, so what the redrive sends stays in their queues to be counted.
    Whatever it leaves there is dropped afterwards, for the next test's workers."""
    live_worker.stop()
    worker = make_worker(["events"], "worker-events-redrive.log")
    worker.start()
    yield worker
    worker.stop()
    redis.Redis.from_url(redis_server.url).delete("probe")


@pytest.mark.timeout(300)
def test_ten_thousand_dead_deliveries_are_redriven_in_chunks_by_a_real_worker(
    events_only_worker, redis_server, operator
):
    # given 10,000 dead deliveries whose cause is fixed, and 50 that failed otherwise
    events = dead_probe_deliveries(10_000, error="gave up after 4 attempts: SMTP timeout")
    dead_probe_deliveries(50, error="refused", at=T0 + dt.timedelta(days=1))
    redrive = RedriveFilter(consumers=("probe",), error_contains="timeout")

    # when the operator counts, sees 10,000, and confirms
    counted = count_redrive(redrive)
    assert counted.total == 10_000
    redrive_id = start_bulk_redrive(
        redrive=dataclasses.replace(redrive, up_to_pk=counted.up_to_pk),
        operator=operator,
        confirmed_count=counted.total,
    )

    def redrive_log() -> str:
        lines = events_only_worker.log_path.read_text(errors="replace").splitlines()
        return "\n".join(line for line in lines if f"bulk redrive {redrive_id}:" in line)

    # then the task worked in chunks of 100: one log line per run of the task
    log = wait_for(
        lambda: (
            (text := redrive_log()) and "the rest goes on" not in text.splitlines()[-1] and text
        ),
        timeout=240,
        interval=1,
        what="the task's last log line",
    )
    pattern = rf"bulk redrive {redrive_id}: (\d+) deliveries re-sent in (\d+) chunks"
    runs = [(int(n), int(chunks)) for n, chunks in re.findall(pattern, log)]
    assert sum(n for n, _ in runs) == 10_000
    assert sum(chunks for _, chunks in runs) == 100
    # and every one was reset, with its whole attempt budget again, and sent exactly once
    redriven = Delivery.objects.filter(event__in=events, consumer="probe")
    assert set(redriven.values_list("state", "attempts_at_redrive")) == {("pending", 4)}
    queued = queued_delivery_ids(redis_server, "probe")
    assert set(queued.values()) == {1}
    assert set(queued) >= set(redriven.values_list("pk", flat=True))
    # the 50 that failed otherwise were not selected
    assert (
        Delivery.objects.filter(consumer="probe", state="dead", last_error="refused").count() == 50
    )
    # and the audit log has the redrive, with the operator and the filter (its worker
    # is down here: the audit delivery runs in this process, through the real claim)
    assert [outcome.outcome for outcome in drain("audit")] == ["done"]
    entry = AuditEntry.objects.get(event_type=OPERATOR_REDRIVE)
    assert entry.actor == operator.pk
    assert entry.detail["confirmed_count"] == 10_000
    assert entry.detail["filter"]["error_contains"] == "timeout"
    assert verify_chain().intact
