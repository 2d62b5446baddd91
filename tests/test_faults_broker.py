"""Broker loss the ledger heals: every kind of lost message, found by comparing Redis with the ledger.

A killed worker holding retries, Redis restored from an older snapshot, a purged queue,
``FLUSHALL``, a failover to an empty replica: each ends with every delivery done exactly
once and, where uploads are involved, every mail sent once. The relay runs in the
background as beat runs it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings

from events.models import Delivery, Event
from notifications.models import Notification
from tests.conftest import RelayLoop
from tests.factories import publish_fault, upload_text
from tests.processes import CeleryWorker, RedisServer, wait_for
from tests.test_faults_worker import REPEAT, all_done, assert_each_done_once, queued_delivery_ids

pytestmark = pytest.mark.django_db(transaction=True)


def mails_sent() -> int:
    """Messages the file backend wrote: one file per connection, so count the messages
    (two connections opened in one second at one address share a file)."""
    return sum(
        path.read_text().count("\nMessage-ID: ")
        for path in Path(settings.EMAIL_FILE_PATH).iterdir()
    )


def uploads_settled(events: list[Event]) -> bool:
    return all_done(events)


def assert_every_mail_sent_once(events: list[Event]) -> None:
    assert Notification.objects.filter(event_id__in=[e.pk for e in events]).count() == len(events)
    assert mails_sent() == len(events)
    deliveries = Delivery.objects.filter(event__in=events)
    assert set(deliveries.values_list("state", flat=True)) == {"done"}


def _upload_events(user, count: int) -> list[Event]:
    uploads = [upload_text(user, text=f"file {n}", name=f"f{n}.txt") for n in range(count)]
    return list(Event.objects.filter(aggregate_id__in=[str(u.pk) for u in uploads]))


# ------------------------------------------------------------------------------
# Retries held by a killed worker
# ------------------------------------------------------------------------------
@pytest.fixture
def slow_retry_worker(
    live_worker: CeleryWorker, make_worker: Callable[..., CeleryWorker]
) -> Iterator[CeleryWorker]:
    """The only worker on the probe queue, its first retry due 2 to 4 s after a failure.

    Its tests fail ten deliveries in a row on purpose, to see their retries: the breaker
    (which would park them, tests/test_breaker.py) stays out of the way."""
    live_worker.stop()
    worker = make_worker(
        ["probe"],
        "worker-slow-retry.log",
        {"EVENTS_RETRY_BACKOFF_SECONDS": "4", "EVENTS_BREAKER_FAILURES": "1000"},
    )
    worker.start()
    yield worker
    worker.kill()


def _retrying(events: list[Event]) -> int:
    return Delivery.objects.filter(
        event__in=events, consumer="probe_fault", attempts=1, state="retrying"
    ).count()


def test_retries_of_a_sigkilled_worker_run_when_due_not_after_the_visibility_timeout(
    slow_retry_worker: CeleryWorker, live_worker: CeleryWorker
):
    events = [publish_fault(transient_failures={"probe_fault": 1}) for _ in range(10)]
    with RelayLoop():
        wait_for(lambda: _retrying(events) == 10, what="ten deliveries waiting for their retry")
        slow_retry_worker.kill()
        live_worker.start()
        # Due 2 to 4 s after their failure; the visibility timeout is an hour.
        wait_for(lambda: all_done(events), timeout=30, what="the retries")
    deliveries = Delivery.objects.filter(event__in=events, consumer="probe_fault")
    assert sorted(set(deliveries.values_list("state", "attempts"))) == [("done", 2)]


def test_a_retry_is_committed_with_its_due_time_and_sits_in_no_queue(
    slow_retry_worker: CeleryWorker, live_worker: CeleryWorker, redis_server: RedisServer
):
    event = publish_fault(transient_failures={"probe_fault": 1})
    wait_for(lambda: _retrying([event]) == 1, what="the first attempt to fail")
    delivery = Delivery.objects.get(event=event, consumer="probe_fault")
    assert (delivery.enqueued_at, delivery.retry_at is not None) == (None, True)
    assert queued_delivery_ids(redis_server)[delivery.pk] == 0
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.hlen("unacked") == 0  # not held by the worker either
    finally:
        client.close()
    with RelayLoop():
        wait_for(lambda: all_done([event]), what="the relayed retry")
    assert Delivery.objects.get(pk=delivery.pk).attempts == 2


# ------------------------------------------------------------------------------
# Redis losing some or all of its data
# ------------------------------------------------------------------------------
@pytest.mark.parametrize("run", REPEAT)
def test_redis_restored_from_an_older_snapshot_loses_nothing(
    live_worker: CeleryWorker, redis_server: RedisServer, user, run: int
):
    live_worker.stop()
    before = _upload_events(user, 5)
    redis_server.save_snapshot()
    after = _upload_events(user, 5)
    redis_server.stop()
    redis_server.start(from_snapshot=True)
    try:
        assert len(queued_delivery_ids(redis_server, "notifications")) == 5  # the older five
        live_worker.start()
        with RelayLoop():
            wait_for(lambda: uploads_settled(before + after), timeout=60, what="every upload")
    finally:
        redis_server.stop()
        redis_server.start()
    assert_every_mail_sent_once(before + after)


@pytest.mark.parametrize("run", REPEAT)
def test_a_purged_queue_loses_nothing(
    live_worker: CeleryWorker, redis_server: RedisServer, run: int
):
    live_worker.stop()
    events = [publish_fault() for _ in range(20)]
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.delete("probe") == 1  # `celery purge -Q probe`, or an operator's DEL
    finally:
        client.close()
    live_worker.start()
    with RelayLoop() as relay:
        wait_for(lambda: all_done(events), timeout=60, what="the purged deliveries")
    assert_each_done_once(events)
    assert relay.published == 20


@pytest.mark.parametrize("run", REPEAT)
def test_flushall_under_a_running_worker_loses_nothing(
    live_worker: CeleryWorker, redis_server: RedisServer, user, run: int
):
    events = _upload_events(user, 10)
    redis_server.flush()
    with RelayLoop():
        wait_for(lambda: uploads_settled(events), timeout=60, what="every upload")
    assert_every_mail_sent_once(events)


@pytest.mark.parametrize("run", REPEAT)
def test_a_failover_to_an_empty_replica_loses_nothing(
    live_worker: CeleryWorker, redis_server: RedisServer, user, run: int
):
    # What clients behind one address (Sentinel, a proxy, a DNS name) see of a failover to
    # a replica that had not received anything yet: the same address, another server
    # (its own run_id), none of the data.
    live_worker.stop()
    events = _upload_events(user, 5)
    old_run_id = _run_id(redis_server)
    redis_server.stop()
    redis_server.start()
    assert _run_id(redis_server) != old_run_id
    live_worker.start()
    with RelayLoop():
        wait_for(lambda: uploads_settled(events), timeout=60, what="every upload")
    assert_every_mail_sent_once(events)


def _run_id(server: RedisServer) -> str:
    client = redis.Redis.from_url(server.url)
    try:
        return str(client.info("server")["run_id"])
    finally:
        client.close()


def test_a_backlog_waiting_in_its_queue_is_never_sent_twice(
    live_worker: CeleryWorker, redis_server: RedisServer
):
    live_worker.stop()
    events = [publish_fault() for _ in range(200)]
    ids = set(Delivery.objects.filter(event__in=events).values_list("pk", flat=True))
    with RelayLoop(interval=0.1) as relay:
        wait_for(lambda: relay.passes > 30, what="many relay passes over the backlog")
        assert relay.published == 0
        assert set(queued_delivery_ids(redis_server).values()) == {1}
        live_worker.start()
        wait_for(lambda: all_done(events), timeout=60, what="the backlog")
        assert relay.published == 0
    assert len(ids) == 200
    assert_each_done_once(events)


def test_a_message_stranded_unacknowledged_by_a_gone_worker_is_sent_again_after_its_hold(
    live_worker: CeleryWorker, redis_server: RedisServer
):
    # The state a worker leaves when it dies (or a warm shutdown does not give a message
    # back) right after taking a message: in Redis's unacked hash, in no queue, until the
    # visibility timeout (an hour). probe_fault's hold is 2 s time limit + 1 s margin.
    live_worker.stop()
    event = publish_fault()
    delivery = Delivery.objects.get(event=event, consumer="probe_fault")
    client = redis.Redis.from_url(redis_server.url)
    try:
        raw = client.rpop("probe")
        message = json.loads(raw)
        info = message["properties"]["delivery_info"]
        tag = message["properties"]["delivery_tag"]
        client.hset("unacked", tag, json.dumps([message, info["exchange"], info["routing_key"]]))
        client.zadd("unacked_index", {tag: time.time()})
        assert queued_delivery_ids(redis_server)[delivery.pk] == 0
    finally:
        client.close()

    live_worker.start()
    with RelayLoop() as relay:
        wait_for(lambda: all_done([event]), timeout=30, what="the stranded delivery")
    assert relay.published == 1
    assert_each_done_once([event])
