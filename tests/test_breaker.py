"""The circuit breaker (issue 19 part 2), in-process: open, park, probe, close, and one
breaker per webhook endpoint. With real workers and a real SMTP server going down and
up: ``tests/test_breaker_smtp.py``."""

from __future__ import annotations

import json
import logging

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from events.breaker import take_due_probes
from events.delivery import run_delivery
from events.models import Breaker, Delivery, DeliveryAttempt
from events.registry import get_consumer
from events.relay import due_delivery_ids
from events.testing import drain
from tests.factories import publish_probe, upload_text
from tests.processes import free_port
from tests.webhook_receiver import Receiver
from webhooks.consumer import calls, fan_out
from webhooks.services import add_endpoint

pytestmark = pytest.mark.django_db

ALWAYS = 1000  # transient failures: more than any test runs


@pytest.fixture(autouse=True)
def _breaker_settings(settings):
    settings.EVENTS_BREAKER_FAILURES = 3
    settings.EVENTS_BREAKER_PROBE_SECONDS = 30


def probe_deliveries(count: int, **instructions) -> list[Delivery]:
    events = [publish_probe(**instructions) for _ in range(count)]
    return [Delivery.objects.get(event=event, consumer="probe") for event in events]


def run(delivery: Delivery) -> str:
    return run_delivery(delivery_id=delivery.pk, consumer_name=delivery.consumer).outcome


def fresh(delivery: Delivery) -> Delivery:
    delivery.refresh_from_db()
    return delivery


def test_consecutive_transient_failures_open_the_breaker_and_the_rest_park_uncounted(caplog):
    deliveries = probe_deliveries(6, transient_failures={"probe": ALWAYS})

    with caplog.at_level(logging.WARNING, logger="events.breaker"):
        outcomes = [run(delivery) for delivery in deliveries]

    # two retries, the third failure opens it (and parks that one), the rest never run
    assert outcomes == ["retry", "retry", "parked", "parked", "parked", "parked"]
    assert [fresh(d).attempts for d in deliveries] == [1, 1, 1, 0, 0, 0]
    assert {fresh(d).state for d in deliveries[2:]} == {"retrying", "pending"}
    assert all(fresh(d).enqueued_at is None for d in deliveries)
    breaker = Breaker.objects.get(consumer="probe", key="")
    assert breaker.opened_at is not None and breaker.failures == 3
    assert "breaker probe opened after 3 consecutive failures" in caplog.text
    # the relay leaves them all: not due while the breaker is open, not even the retries
    Delivery.objects.update(retry_at="2026-01-01T00:00:00Z")
    assert not set(due_delivery_ids(["probe"], limit=100)) & {d.pk for d in deliveries}


def test_one_delivery_failing_again_and_again_never_opens_the_breaker_and_goes_dead():
    [poison] = probe_deliveries(1, transient_failures={"probe": ALWAYS})

    outcomes = [run(poison) for _ in range(4)]  # probe allows 4 attempts

    assert outcomes == ["retry", "retry", "retry", "dead"]
    assert Breaker.objects.get().opened_at is None


def test_a_lone_delivery_whose_dependency_is_down_parks_through_the_outage_instead_of_dying():
    # given one delivery in a quiet consumer, its dependency unreachable for a long time
    [lone] = probe_deliveries(1, dependency_failures={"probe": ALWAYS})

    # its own failures count (the handler says the dependency, not the message, failed)
    assert [run(lone) for _ in range(3)] == ["retry", "retry", "parked"]
    assert Breaker.objects.get().opened_at is not None
    # and every probe through the outage parks it again, far past its budget of 4
    for _ in range(10):
        Breaker.objects.update(probe_delivery_id=lone.pk)
        assert run(lone) == "parked"
    assert (fresh(lone).state, fresh(lone).attempts) == ("retrying", 13)


def test_a_delivery_parked_longer_than_the_longest_park_spends_its_budget_and_dies(settings):
    # given a delivery parked under an open breaker since before the longest park
    settings.EVENTS_BREAKER_MAX_PARK_SECONDS = 3600
    [old] = probe_deliveries(1, dependency_failures={"probe": ALWAYS})
    Delivery.objects.filter(pk=old.pk).update(created_at="2020-01-01T00:00:00Z")
    Breaker.objects.create(consumer="probe", key="", failures=3, opened_at="2026-01-01T00:00Z")

    outcomes = []
    for _ in range(4):  # probe allows 4
        Breaker.objects.update(probe_delivery_id=old.pk)
        outcomes.append(run(old))

    # then its probes count again, and it goes dead on its budget for an operator to see
    assert outcomes == ["retry", "retry", "retry", "dead"]
    assert fresh(old).last_error.startswith("gave up after 4 attempts")


def test_a_success_resets_the_count_before_it_opens():
    failing = probe_deliveries(2, transient_failures={"probe": ALWAYS})
    [ok] = probe_deliveries(1)
    later = probe_deliveries(2, transient_failures={"probe": ALWAYS})

    assert [run(d) for d in failing] == ["retry", "retry"]
    assert run(ok) == "done"
    assert not Breaker.objects.exists()
    assert [run(d) for d in later] == ["retry", "retry"]
    assert Breaker.objects.get().opened_at is None


def test_a_permanent_error_never_opens_the_breaker():
    deliveries = probe_deliveries(5, permanent_failures=["probe"])

    assert [run(d) for d in deliveries] == ["dead"] * 5
    assert not Breaker.objects.exists()


def test_a_success_with_no_failure_recorded_writes_nothing_to_the_breaker():
    [delivery] = probe_deliveries(1)

    with CaptureQueriesContext(connection) as queries:
        assert run(delivery) == "done"

    breaker_writes = [
        q["sql"]
        for q in queries.captured_queries
        if "events_breaker" in q["sql"]
        # the claim itself reads it (wrapped in WITH ... on PostgreSQL)
        and not q["sql"].lstrip().startswith(("UPDATE events_delivery", "WITH claimed AS ("))
    ]
    assert breaker_writes == []


def test_one_probe_at_a_time_and_a_successful_probe_closes_it_and_frees_the_parked(settings):
    deliveries = probe_deliveries(5, transient_failures={"probe": 3})
    assert [run(d) for d in deliveries] == ["retry", "retry", "parked", "parked", "parked"]
    assert take_due_probes([get_consumer("probe")]) == []  # not due for 30 s
    Breaker.objects.update(probe_at="2026-01-01T00:00:00Z")

    [probe] = take_due_probes([get_consumer("probe")])
    assert take_due_probes([get_consumer("probe")]) == []  # the next one is 30 s away
    others = [d for d in deliveries if d.pk != probe]
    assert [run(d) for d in others] == ["parked"] * 4  # only the probe may run

    # the probe is the oldest parked delivery, which has failed fewer than 3 times
    probed = Delivery.objects.get(pk=probe)
    assert run(probed) in ("retry", "parked", "done")
    while Breaker.objects.filter(opened_at__isnull=False).exists():
        Breaker.objects.update(probe_at="2026-01-01T00:00:00Z")
        [probe] = take_due_probes([get_consumer("probe")])
        run(Delivery.objects.get(pk=probe))

    assert not Breaker.objects.exists()
    # closed: every parked delivery is due at once, and runs. A probe that failed just
    # before the last one succeeded waits out its own backoff (at most a second) first.
    now = timezone.now()
    waiting = [fresh(d) for d in deliveries if fresh(d).state != "done"]
    parked = {d.pk for d in waiting if d.retry_at is None or d.retry_at <= now}
    assert len(parked) >= 2, [(d.pk, d.state, d.retry_at) for d in waiting]
    assert parked <= set(due_delivery_ids(["probe"], limit=100))
    # Each still fails its first three tries (by its own count): let them, without the
    # breaker reopening, to see every one of them run to done.
    settings.EVENTS_BREAKER_FAILURES = ALWAYS
    drain("probe", with_retries=True)
    assert {fresh(d).state for d in deliveries} == {"done"}


def test_a_delivery_out_of_attempts_under_an_open_breaker_parks_instead_of_dying():
    [delivery] = probe_deliveries(1, transient_failures={"probe": ALWAYS})
    Delivery.objects.filter(pk=delivery.pk).update(attempts=3)  # probe allows 4
    Breaker.objects.create(consumer="probe", key="", failures=3, opened_at="2026-01-01T00:00Z")
    Breaker.objects.update(probe_delivery_id=delivery.pk)

    assert run(delivery) == "parked"

    delivery = fresh(delivery)
    assert (delivery.state, delivery.attempts, delivery.enqueued_at) == ("retrying", 4, None)
    assert DeliveryAttempt.objects.get(delivery=delivery).outcome == "retry"


def test_failed_probes_spend_none_of_the_delivery_attempt_budget():
    # given a delivery probed again and again through a long outage (probe allows 4)
    [delivery] = probe_deliveries(1, transient_failures={"probe": 6})
    Breaker.objects.create(consumer="probe", key="", failures=3, opened_at="2026-01-01T00:00Z")
    for _ in range(5):
        Breaker.objects.update(probe_delivery_id=delivery.pk)
        assert run(delivery) == "parked"
    assert fresh(delivery).attempts == 5

    # when the breaker closes and the dependency flaps once more
    Breaker.objects.all().delete()
    outcome = run(delivery)

    # then it retries on its own budget instead of dying on its first failure, and the
    # budget it gives up on counts the attempts made outside the breaker
    assert outcome == "retry"
    assert run(delivery) == "done"
    assert fresh(delivery).attempts == 7


def test_event_status_metrics_and_overview_show_an_open_breaker(
    client, admin_client, settings, capsys
):
    settings.METRICS_TOKEN = "t0ken"
    Breaker.objects.create(consumer="probe", key="", failures=5, opened_at="2026-01-01T00:00Z")
    Breaker.objects.create(
        consumer="webhook_calls", key="7", failures=5, opened_at="2026-01-01T00:00Z"
    )
    Breaker.objects.create(consumer="audit", key="", failures=2)  # counting, not open

    call_command("event_status", "--json")
    consumers = json.loads(capsys.readouterr().out)["consumers"]
    assert consumers["webhook_calls"]["breakers_open"][0]["key"] == "7"
    assert consumers["probe"]["breakers_open"][0]["open_seconds"] > 3600
    assert consumers["audit"]["breakers_open"] == []

    call_command("event_status")
    table = capsys.readouterr().out
    assert "breaker open" in next(line for line in table.splitlines() if line.startswith("probe "))

    with pytest.raises(SystemExit):
        call_command("event_status", "--check", "--max-waiting-seconds", "1e9")
    out = capsys.readouterr().out
    assert "webhook_calls: breaker [7] open" in out and "probe: breaker open" in out

    metrics = client.get("/metrics", HTTP_AUTHORIZATION="Bearer t0ken").content.decode()
    assert 'events_breakers_open{consumer="webhook_calls"} 1.0' in metrics
    assert 'events_breakers_open{consumer="audit"} 0.0' in metrics

    html = admin_client.get(reverse("admin:index")).content.decode()
    row = html[html.index('<tr data-consumer="webhook_calls">') :]
    assert 'class="breaker-open">breaker [7] open' in row[: row.index("</tr>")]


def test_one_broken_webhook_endpoint_never_parks_another_endpoints_calls(user):
    receiver = Receiver()
    try:
        broken = add_endpoint(owner=user, url=f"http://127.0.0.1:{free_port()}/hook")
        healthy = add_endpoint(owner=user, url=receiver.script("/ok"))
        for i in range(6):
            upload_text(user, f"file {i}", name=f"f{i}.txt")
        drain(fan_out.name)

        drain(calls.name)  # every call once: the broken ones refused, the healthy ones 200
        drain(calls.name)

        healthy_calls = Delivery.objects.filter(consumer=calls.name, breaker_key=str(healthy.pk))
        assert {d.state for d in healthy_calls} == {"done"} and healthy_calls.count() == 6
        assert len(receiver.at("/ok")) == 6
        assert Breaker.objects.get(key=str(broken.pk)).opened_at is not None
        assert not Breaker.objects.filter(key=str(healthy.pk)).exists()
        broken_calls = Delivery.objects.filter(consumer=calls.name, breaker_key=str(broken.pk))
        # three attempts opened it; the other calls parked without one
        assert sum(d.attempts for d in broken_calls) == 3
        assert {d.state for d in broken_calls} <= {"pending", "retrying"}

        # a new upload: the healthy endpoint's call runs, the broken one's parks
        upload_text(user, "one more", name="more.txt")
        drain(fan_out.name)
        newest = {
            key: Delivery.objects.filter(consumer=calls.name, breaker_key=key).latest("pk")
            for key in (str(healthy.pk), str(broken.pk))
        }
        assert run(newest[str(healthy.pk)]) == "done"
        assert run(newest[str(broken.pk)]) == "parked"
        assert fresh(newest[str(broken.pk)]).attempts == 0
    finally:
        receiver.close()
