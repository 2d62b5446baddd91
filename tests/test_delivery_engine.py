"""The delivery engine in one process: claim, lease, relay rules.

These tests drive the services directly against the test Redis; the worker-level
faults (crashes, time limits, restarts, an orphan delivery, a failing on-commit publish)
are in ``tests/test_faults_worker.py``.
"""

from __future__ import annotations

import datetime as dt
from unittest import mock

import pytest
from celery import current_app
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from events.delivery import LeaseLost, run_delivery
from events.models import Delivery, Event
from events.outbox import publish_deliveries_now
from events.registry import all_consumers
from events.relay import declare_consumers, relay_outbox, retire_orphans
from housekeeping.replay import redeliver_deliveries
from tests.factories import publish_fault, publish_probe

pytestmark = pytest.mark.django_db

LONG_AGO = dt.timedelta(minutes=10)


class ProcessDied(BaseException):
    """Stands in for a process killed mid-handler: nothing after it runs in that process."""


def probe_delivery(consumer: str = "probe", **instructions: object) -> Delivery:
    event = publish_probe(**instructions)
    return Delivery.objects.select_related("event").get(event=event, consumer=consumer)


def crashing_handler(envelope: object) -> None:
    raise ProcessDied()


# ------------------------------------------------------------------------------
# 1. The attempt is counted when it starts, in its own committed claim
# ------------------------------------------------------------------------------
def test_an_attempt_that_dies_in_its_handler_has_been_counted():
    delivery = probe_delivery()

    with (
        mock.patch.dict(delivery_handlers("probe"), {"test.probe": crashing_handler}),
        pytest.raises(ProcessDied),
    ):
        run_delivery(delivery_id=delivery.pk)

    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("running", 1)
    assert delivery.lease_expires_at is not None


def test_a_delivery_whose_attempts_are_used_up_by_crashes_goes_dead_without_running():
    delivery = probe_delivery()
    Delivery.objects.filter(pk=delivery.pk).update(
        state="running", attempts=4, lease_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )

    with mock.patch.dict(delivery_handlers("probe"), {"test.probe": crashing_handler}):
        outcome = run_delivery(delivery_id=delivery.pk)

    delivery.refresh_from_db()
    assert outcome.outcome == "dead"
    assert (delivery.state, delivery.attempts) == ("dead", 4)
    assert delivery.last_error == "gave up after 4 attempts: the last attempt did not finish"


def test_a_duplicate_message_while_the_lease_is_held_runs_nothing():
    delivery = probe_delivery()
    Delivery.objects.filter(pk=delivery.pk).update(
        state="running", attempts=1, lease_expires_at=timezone.now() + dt.timedelta(minutes=1)
    )

    with mock.patch.dict(delivery_handlers("probe"), {"test.probe": crashing_handler}):
        outcome = run_delivery(delivery_id=delivery.pk)

    assert outcome.outcome == "skipped"
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("running", 1)


def test_an_attempt_whose_lease_was_taken_over_cannot_finish_and_its_writes_roll_back():
    from events.delivery import claim_delivery, finish_delivery
    from events.registry import get_consumer
    from tests.probe.models import ProbeEffect

    delivery = probe_delivery()
    consumer = get_consumer("probe")
    first = claim_delivery(delivery_id=delivery.pk, consumer=consumer, task_id="first")
    # Its lease expires (the attempt looked dead) and a second attempt takes over.
    Delivery.objects.filter(pk=delivery.pk).update(
        lease_expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    second = claim_delivery(delivery_id=delivery.pk, consumer=consumer, task_id="second")
    assert (first.attempt, second.attempt) == (1, 2)

    with pytest.raises(LeaseLost):
        finish_delivery(first)

    assert not ProbeEffect.objects.filter(event_id=delivery.event_id).exists()
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.task_id) == ("running", 2, "second")
    finish_delivery(second)
    assert ProbeEffect.objects.filter(event_id=delivery.event_id).count() == 1
    assert Delivery.objects.get(pk=delivery.pk).state == "done"


def test_a_retry_publishes_nothing_and_the_relay_sends_it_once_when_due(sent_tasks):
    delivery = probe_delivery(transient_failures={"probe": 1})
    outcome = run_delivery(delivery_id=delivery.pk)
    assert outcome.outcome == "retry"
    delivery.refresh_from_db()
    assert (delivery.state, delivery.enqueued_at) == ("retrying", None)
    Delivery.objects.filter(pk=delivery.pk).update(
        retry_at=timezone.now() + dt.timedelta(minutes=1)
    )
    relay_outbox()
    assert delivery.pk not in published_delivery_ids(sent_tasks)  # not due yet

    Delivery.objects.filter(pk=delivery.pk).update(
        retry_at=timezone.now() - dt.timedelta(seconds=1)
    )
    relay_outbox()
    relay_outbox()
    assert published_delivery_ids(sent_tasks).count(delivery.pk) == 1
    assert all(call.kwargs.get("countdown") is None for call in sent_tasks.call_args_list)


def delivery_handlers(consumer: str) -> dict:
    from events.registry import get_consumer

    return get_consumer(consumer).handlers  # type: ignore[return-value]


# ------------------------------------------------------------------------------
# 2. The relay republishes only what is lost, never what merely waits in a queue
# ------------------------------------------------------------------------------
def test_a_delivery_waiting_in_its_queue_is_not_republished_however_long_it_waits(sent_tasks):
    delivery = probe_delivery()
    publish_deliveries_now([delivery])
    sent_tasks.reset_mock()
    long_ago = timezone.now() - dt.timedelta(hours=1)
    Delivery.objects.update(created_at=long_ago)
    Delivery.objects.filter(pk=delivery.pk).update(enqueued_at=long_ago)

    relay_outbox()

    assert delivery.pk not in published_delivery_ids(sent_tasks)


def published_delivery_ids(spy: mock.MagicMock) -> list[int]:
    return [call.kwargs["kwargs"]["delivery_id"] for call in spy.call_args_list]


# ------------------------------------------------------------------------------
# 3. The relay never talks to the broker inside a transaction
# ------------------------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_the_relay_publishes_outside_any_transaction():
    # As if the on-commit publish had never run.
    with mock.patch("events.outbox.publish_committed"):
        delivery = probe_delivery()
    Delivery.objects.update(created_at=timezone.now() - LONG_AGO)
    in_transaction: list[bool] = []
    send = current_app.send_task

    def spy(*args: object, **kwargs: object) -> object:
        in_transaction.append(connection.in_atomic_block and not connection.get_autocommit())
        return send(*args, **kwargs)

    with mock.patch.object(current_app, "send_task", side_effect=spy):
        relay_outbox()

    assert delivery.pk and in_transaction == [False, False]


# ------------------------------------------------------------------------------
# 4. Worker settings that acks late relies on
# ------------------------------------------------------------------------------
def test_workers_reserve_one_message_at_a_time_and_finish_tasks_when_the_broker_drops():
    assert current_app.conf.worker_prefetch_multiplier == 1
    assert current_app.conf.worker_cancel_long_running_tasks_on_connection_loss is False


# ------------------------------------------------------------------------------
# 5. An event newer than this code waits for the upgrade instead of going dead
# ------------------------------------------------------------------------------
def test_an_event_of_a_newer_version_is_retried_with_a_clear_reason():
    delivery = probe_delivery()
    Event.objects.filter(pk=delivery.event_id).update(version=9)

    outcome = run_delivery(delivery_id=delivery.pk)

    assert outcome.outcome == "retry"
    assert outcome.countdown and outcome.countdown > 0
    assert "newer than this code knows" in outcome.reason
    delivery.refresh_from_db()
    assert delivery.state == "retrying"
    assert "waiting for an upgrade" in delivery.last_error


# ------------------------------------------------------------------------------
# Engine v3: redrive budget, retired consumers, what the relay reads
# ------------------------------------------------------------------------------
def fault_delivery(**instructions: object) -> Delivery:
    event = publish_fault(**instructions)
    return Delivery.objects.select_related("event").get(event=event, consumer="probe_fault")


def test_a_redriven_dead_delivery_gets_its_consumers_whole_attempt_budget_again(published):
    delivery = fault_delivery(transient_failures={"probe_fault": 100})
    outcomes = [run_delivery(delivery_id=delivery.pk).outcome for _ in range(3)]
    assert outcomes == ["retry", "retry", "dead"]

    redeliver_deliveries(deliveries=Delivery.objects.filter(pk=delivery.pk))
    outcomes = [run_delivery(delivery_id=delivery.pk).outcome for _ in range(3)]

    assert outcomes == ["retry", "retry", "dead"]
    delivery.refresh_from_db()
    assert delivery.attempts == 6  # counted on: the fence and the history stay unique
    assert delivery.last_error.startswith("gave up after 3 counted attempts (6 in all; ")
    assert list(delivery.tries.values_list("number", flat=True)) == [1, 2, 3, 4, 5, 6]


def test_a_retired_consumers_open_deliveries_go_dead_once_no_process_has_declared_it_for_a_while(
    settings,
):
    waiting = fault_delivery()
    Delivery.objects.filter(pk=waiting.pk).update(
        consumer="retired", created_at=timezone.now() - LONG_AGO
    )
    fresh = fault_delivery()
    Delivery.objects.filter(pk=fresh.pk).update(consumer="retired_too")
    settings.EVENTS_RETIRED_CONSUMER_GRACE_SECONDS = 60

    retire_orphans(all_consumers())  # what the relay does ten times per grace

    waiting.refresh_from_db()
    fresh.refresh_from_db()
    assert (waiting.state, waiting.last_error) == ("dead", "consumer no longer registered")
    assert fresh.state == "pending"  # maybe a newer deploy's consumer: within the grace


def test_a_relay_running_older_code_leaves_a_newer_consumers_deliveries_alone(settings):
    newer = fault_delivery()
    Delivery.objects.filter(pk=newer.pk).update(
        consumer="added_by_the_next_release", created_at=timezone.now() - LONG_AGO
    )
    settings.EVENTS_RETIRED_CONSUMER_GRACE_SECONDS = 60
    # A process running the newer code declared it a moment ago (its worker or relay).
    declare_consumers(["added_by_the_next_release"])

    retire_orphans(all_consumers())

    newer.refresh_from_db()
    assert newer.state == "pending"


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's query plans")
def test_the_relay_reads_the_ledger_through_its_indexes_never_a_table_scan():
    for _ in range(3):
        fault_delivery()
    with CaptureQueriesContext(connection) as queries:
        relay_outbox()
    plans = []
    with connection.cursor() as cursor:
        for query in queries.captured_queries:
            sql = query["sql"]
            if "events_delivery" not in sql or not sql.lstrip().upper().startswith(
                ("SELECT", "UPDATE")
            ):
                continue
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
            plans.append((sql, [row[-1] for row in cursor.fetchall()]))
    assert plans
    scans = [
        (sql, plan)
        for sql, plan in plans
        if any(step.startswith("SCAN events_delivery") for step in plan)
    ]
    assert scans == []
