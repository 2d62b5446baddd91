"""Fault injection: crashes, time limits, kills, stopped workers, a Redis that loses its data.

Everything runs through real worker processes and a real Redis, with the relay running
in the background as beat runs it in production. The ``probe_fault`` consumer (time
limit 2 s, 3 attempts, tests/probe) crashes, hangs or swallows its soft time limit on
command; ``attempts_seen`` counts attempts that reached the handler from a file outside
the database, so attempts that died before recording anything still count.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from unittest import mock

import pytest
import redis
from celery import current_app
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import OperationalError
from django.utils import timezone

from audit.models import AuditEntry
from events import relay
from events.models import Delivery, Event
from events.outbox import publish_deliveries_now
from events.registry import all_consumers
from events.relay import retire_orphans
from indexing.models import IndexEntry
from notifications.models import Notification
from tests.conftest import BeatLoop, RelayLoop
from tests.factories import publish_fault, publish_probe, settled
from tests.probe.handlers import attempts_seen, effect_marker
from tests.probe.models import ProbeEffect
from tests.processes import CeleryWorker, RedisServer, wait_for
from uploads.models import Upload

pytestmark = pytest.mark.django_db(transaction=True)

# FAULT_REPEAT=20 runs the broker-loss tests 20 times each, to trust them.
REPEAT = range(int(os.environ.get("FAULT_REPEAT", "1")))


def fault_delivery(event: Event) -> Delivery:
    return Delivery.objects.get(event=event, consumer="probe_fault")


def all_done(events: Iterable[Event]) -> bool:
    ids = [event.pk for event in events]
    return not Delivery.objects.filter(event_id__in=ids).exclude(state="done").exists()


def queued_delivery_ids(server: RedisServer, queue: str = "probe") -> Counter[int]:
    """Delivery id → messages for it waiting in ``queue``, read from Redis itself."""
    client = redis.Redis.from_url(server.url)
    try:
        counts: Counter[int] = Counter()
        for raw in client.lrange(queue, 0, -1):
            message = json.loads(raw)
            _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
            counts[kwargs["delivery_id"]] += 1
        return counts
    finally:
        client.close()


def assert_each_done_once(events: list[Event]) -> None:
    """Every delivery done after one attempt, with one effect: nothing ran twice."""
    deliveries = Delivery.objects.filter(event__in=events, consumer="probe_fault")
    assert sorted(deliveries.values_list("state", "attempts").distinct()) == [("done", 1)]
    effects = Counter(ProbeEffect.objects.filter(consumer="probe_fault").values_list("event_id"))
    assert len(effects) == len(events)
    assert set(effects.values()) == {1}
    assert sum(attempts_seen(e.payload["key"], "probe_fault") for e in events) == len(events)


# ------------------------------------------------------------------------------
# Attempts that never finish are counted
# ------------------------------------------------------------------------------
def test_a_process_that_dies_every_time_goes_dead_after_max_attempts_and_others_keep_flowing(
    running_relay: RelayLoop,
):
    poison = publish_fault(crash_attempts={"probe_fault": 99})
    healthy = [publish_probe() for _ in range(3)]

    assert wait_for(lambda: settled(poison), timeout=60, what="poison")["probe_fault"] == "dead"
    dead = fault_delivery(poison)
    assert dead.attempts == 3
    assert dead.last_error == "gave up after 3 attempts: the last attempt did not finish"
    assert attempts_seen(poison.payload["key"], "probe_fault") == 3
    # Each crash came after the effect was written and before it committed.
    assert not ProbeEffect.objects.filter(event_id=poison.id).exists()
    for event in healthy:
        assert set(wait_for(lambda e=event: settled(e), what="healthy").values()) == {"done"}
        assert ProbeEffect.objects.filter(event_id=event.id).count() == 2


def test_an_attempt_killed_by_the_hard_time_limit_is_counted_and_ends_dead(
    running_relay: RelayLoop,
):
    # The handler swallows the soft time limit, so only the hard limit stops it.
    event = publish_fault(hang_attempts={"probe_fault": 99}, swallow_soft_limit=["probe_fault"])

    assert wait_for(lambda: settled(event), timeout=60, what="hangs")["probe_fault"] == "dead"
    dead = fault_delivery(event)
    assert dead.attempts == 3
    assert dead.last_error == "gave up after 3 attempts: the last attempt did not finish"
    assert attempts_seen(event.payload["key"], "probe_fault") == 3
    assert not dead.tries.exists()  # no attempt lived to record itself


def test_the_soft_time_limit_is_a_recorded_failure_retried_until_dead(running_relay: RelayLoop):
    event = publish_fault(hang_attempts={"probe_fault": 99})

    assert wait_for(lambda: settled(event), timeout=60, what="soft limits")["probe_fault"] == "dead"
    dead = fault_delivery(event)
    assert dead.attempts == 3
    assert dead.last_error.startswith("gave up after 3 attempts: SoftTimeLimitExceeded")
    assert list(dead.tries.values_list("outcome", flat=True)) == ["retry", "retry", "dead"]


def test_a_worker_sigkilled_after_the_effect_and_before_commit_completes_once_after_restart(
    live_worker: CeleryWorker, running_relay: RelayLoop
):
    # Only the probe's delivery is sent: a message the worker had reserved but not yet
    # started when killed would wait in Redis for the visibility timeout (see
    # docs/architecture.md), which is not what this test is about.
    with mock.patch("events.outbox.publish_committed"):
        event = publish_probe(pause_after_effect={"probe": 3})
    Delivery.objects.filter(event=event, consumer="probe_peer").update(state="done")
    publish_deliveries_now(
        [Delivery.objects.select_related("event").get(event=event, consumer="probe")]
    )
    key = event.payload["key"]
    wait_for(lambda: effect_marker(key, "probe").exists(), what="the effect to be written")

    live_worker.kill()
    # The killed attempt was counted in its own committed claim and still holds it.
    killed = Delivery.objects.get(event=event, consumer="probe")
    assert (killed.state, killed.attempts) == ("running", 1)
    live_worker.start()

    assert wait_for(lambda: settled(event), timeout=60, what="the delivery")["probe"] == "done"
    delivery = Delivery.objects.get(event=event, consumer="probe")
    assert delivery.attempts == 2
    assert attempts_seen(key, "probe") == 2
    # The killed attempt's effect rolled back with its transaction: one effect.
    assert ProbeEffect.objects.filter(event_id=event.id, consumer="probe").count() == 1


# ------------------------------------------------------------------------------
# A backlog never multiplies itself; a broker that lost its data loses nothing
# ------------------------------------------------------------------------------
def test_deliveries_waiting_for_stopped_workers_are_never_published_twice(
    live_worker: CeleryWorker, redis_server: RedisServer
):
    live_worker.stop()
    events = [publish_fault() for _ in range(100)]
    ids = set(Delivery.objects.filter(event__in=events).values_list("pk", flat=True))
    with RelayLoop() as relay:
        # Longer than the old relay's stale window in these settings (6 s), which
        # published every waiting delivery again each window.
        time.sleep(7)
        queued = queued_delivery_ids(redis_server)
        assert relay.passes > 10
        assert relay.published == 0
        assert {pk: queued[pk] for pk in ids} == dict.fromkeys(ids, 1)

        live_worker.start()
        wait_for(lambda: all_done(events), timeout=60, what="the backlog")
    assert_each_done_once(events)


@pytest.mark.parametrize("run", REPEAT)
def test_redis_restarted_empty_with_workers_down_loses_nothing(
    live_worker: CeleryWorker, redis_server: RedisServer, run: int
):
    live_worker.stop()
    events = [publish_fault() for _ in range(50)]
    assert sum(queued_delivery_ids(redis_server).values()) >= 50

    redis_server.stop()
    redis_server.start()  # no persistence: empty
    assert queued_delivery_ids(redis_server) == Counter()

    live_worker.start()
    with RelayLoop() as relay:
        wait_for(lambda: all_done(events), timeout=60, what="the lost messages")
    assert_each_done_once(events)
    assert relay.published == 50


@pytest.fixture(scope="module")
def events_worker(make_worker: Callable[..., CeleryWorker]) -> Iterator[CeleryWorker]:
    """A worker on the ``events`` queue alone, where beat's relay task runs in production."""
    worker = make_worker(["events"], "worker-events.log")
    worker.start()
    yield worker
    worker.stop()


@pytest.mark.parametrize("run", REPEAT)
def test_redis_restarted_empty_with_consumers_down_and_the_relay_in_its_worker_loses_nothing(
    live_worker: CeleryWorker, events_worker: CeleryWorker, redis_server: RedisServer, run: int
):
    # As the stack runs: beat sends the relay task to the events worker, which stays up
    # through the restart; the consumer workers are down while Redis loses everything.
    live_worker.stop()
    if not events_worker.running:
        events_worker.start()
    events = [publish_fault() for _ in range(50)]
    redis_server.stop()
    redis_server.start()

    with BeatLoop(interval=1.0) as beat:
        wait_for(lambda: beat.passes >= 3, what="a few relay ticks before the consumers start")
        live_worker.start()
        wait_for(lambda: all_done(events), timeout=60, what="the lost messages")
    assert_each_done_once(events)


def control(command: str, worker: CeleryWorker, queue: str) -> bool:
    """Send a control command and wait for the reply; ``False`` if the broker failed."""
    from kombu.exceptions import KombuError

    try:
        return bool(
            getattr(current_app.control, command)(
                queue, destination=[worker.hostname], reply=True, timeout=1
            )
        )
    except (OSError, KombuError, redis.RedisError):
        return False  # a pooled connection to the Redis that restarted: reconnects next time


@pytest.mark.parametrize("run", REPEAT)
@pytest.mark.parametrize("relay_kind", [RelayLoop, BeatLoop], ids=["relay", "beat"])
def test_redis_restarted_empty_under_running_workers_loses_nothing(
    live_worker: CeleryWorker, redis_server: RedisServer, run: int, relay_kind: type[RelayLoop]
):
    # The worker stays up through the restart and reconnects by itself; it just does not
    # take from the probe queue while the 50 messages are published. With "beat" the
    # relay runs as in production, a task in that worker's pool process, whose pooled
    # broker connections also went through the restart.
    assert control("cancel_consumer", live_worker, "probe")
    relay = relay_kind()
    try:
        events = [publish_fault() for _ in range(50)]
        redis_server.stop()
        redis_server.start()
        assert queued_delivery_ids(redis_server) == Counter()

        relay.start()
        wait_for(
            lambda: control("add_consumer", live_worker, "probe"),
            timeout=60,
            what="the worker to answer again",
        )
        wait_for(lambda: all_done(events), timeout=60, what="the lost messages")
    finally:
        relay.stop()
        live_worker.stop()  # the next test starts it afresh, consuming every queue
    assert_each_done_once(events)


# ------------------------------------------------------------------------------
# The relay never stalls, and nothing after commit undoes it
# ------------------------------------------------------------------------------
def test_an_orphan_before_fifty_unsent_deliveries_never_holds_them_up_and_goes_dead_when_retired(
    live_worker: CeleryWorker, monkeypatch: pytest.MonkeyPatch
):
    # This process's relay retired orphans just now, so none of its passes below does
    # (one pass in ten minutes of a long test run otherwise does, and finds the orphan).
    monkeypatch.setitem(relay._last_done, "retire", time.monotonic())
    with mock.patch("events.outbox.publish_committed"):  # never published
        orphan = publish_fault()
        Delivery.objects.filter(event=orphan).update(
            consumer="retired", created_at=timezone.now() - dt.timedelta(hours=2)
        )
        events = [publish_fault() for _ in range(50)]
    with RelayLoop():
        wait_for(lambda: all_done(events), timeout=60, what="the fifty")
    assert_each_done_once(events)
    assert Delivery.objects.get(event=orphan).state == "pending"  # left alone by the sends

    retire_orphans(all_consumers())  # what each relay does ten times per grace (an hour)

    dead = Delivery.objects.get(event=orphan)
    assert (dead.state, dead.last_error) == ("dead", "consumer no longer registered")


def test_a_failing_on_commit_publish_keeps_the_upload_its_file_and_its_response(
    live_worker: CeleryWorker, client, user, settings
):
    client.force_login(user)
    failing = mock.patch(
        "events.outbox.publish_deliveries_now", side_effect=OperationalError("database is locked")
    )
    with failing:
        response = client.post(
            "/api/uploads/", {"file": SimpleUploadedFile("kept.txt", b"kept after commit")}
        )

    assert response.status_code == 201
    upload = Upload.objects.get(pk=response.json()["id"])
    assert (Path(settings.MEDIA_ROOT) / upload.file.name).read_bytes() == b"kept after commit"
    # The relay publishes what the failed publish left, and every consumer runs once.
    event = Event.objects.get(aggregate_id=str(upload.pk))
    with RelayLoop():
        assert set(wait_for(lambda: settled(event), what="relayed").values()) == {"done"}
    assert Notification.objects.filter(event_id=event.id).count() == 1
    assert AuditEntry.objects.filter(event_id=event.id).count() == 1
    assert IndexEntry.objects.filter(upload_id=upload.pk).count() == 1


def test_two_relays_and_two_worker_pools_publish_and_run_each_delivery_once(
    live_worker: CeleryWorker, make_worker: Callable[..., CeleryWorker]
):
    second = make_worker(["probe"], "worker-second-pool.log")
    second.start()
    with mock.patch("events.outbox.publish_committed"):  # left to the relays
        events = [publish_fault() for _ in range(100)]
    relays = [RelayLoop(interval=0.05).start(), RelayLoop(interval=0.05).start()]
    try:
        wait_for(lambda: all_done(events), timeout=90, what="both pools")
    finally:
        for relay in relays:
            relay.stop()
        second.stop()
    assert_each_done_once(events)
    assert sum(relay.published for relay in relays) == 100
