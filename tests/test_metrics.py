"""``/metrics``: the ledger in the Prometheus text format, behind a bearer token."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from events.models import Delivery, Event
from monitoring.selectors import PUBLIC_STATE_OF
from tests.factories import settled, upload_text
from tests.processes import wait_for

TOKEN = "s3cret-metrics-token"


@pytest.fixture
def metrics_token(settings) -> str:
    settings.METRICS_TOKEN = TOKEN
    return TOKEN


def scrape(client: Client, token: str = TOKEN) -> dict[str, list]:
    """Metric family name → its samples, from a scrape with ``token``."""
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    families = text_string_to_metric_families(response.content.decode())
    return {family.name: family.samples for family in families}


@pytest.mark.django_db
def test_metrics_is_not_found_when_no_token_is_configured(client, settings):
    settings.METRICS_TOKEN = ""

    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer"],
)
def test_metrics_needs_the_bearer_token(client, metrics_token, header):
    extra = {} if header is None else {"HTTP_AUTHORIZATION": header}

    response = client.get("/metrics", **extra)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"events_deliveries" not in response.content


@pytest.mark.django_db
def test_metrics_reads_the_ledger_in_five_small_queries(
    client, metrics_token, user, django_assert_num_queries
):
    for _ in range(3):
        upload_text(user)

    # Counts per state, the oldest waiting delivery, the paused consumers, the open
    # breakers, latency: never one per consumer.
    with django_assert_num_queries(5):
        client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")


@pytest.mark.django_db(transaction=True)
def test_metrics_match_a_real_event_status_run(
    client, metrics_token, live_worker, user, run_manage
):
    # given: two uploads delivered by a real worker, then one delivery dead and one
    # waiting for ten minutes, as an outage would leave them
    events = [
        Event.objects.get(aggregate_id=str(upload_text(user).pk), type="file.uploaded")
        for _ in range(2)
    ]
    for event in events:
        wait_for(lambda event=event: settled(event), what="deliveries to finish")
    Delivery.objects.filter(event=events[0], consumer="indexing").update(state="dead")
    Delivery.objects.filter(event=events[1], consumer="audit").update(
        state="retrying",
        created_at=timezone.now() - dt.timedelta(minutes=10),
        retry_at=timezone.now() + dt.timedelta(hours=1),
    )

    # when
    status = json.loads(run_manage("event_status", "--json").stdout)
    samples = scrape(client)

    # then: every (consumer, state) figure is event_status's, except that the gauge keeps
    # ``running`` apart where event_status counts it as pending
    deliveries = {
        (s.labels["consumer"], s.labels["state"]): s.value for s in samples["events_deliveries"]
    }
    assert {state for _, state in deliveries} == set(Delivery.State.values)
    folded: dict[tuple[str, str], float] = {}
    for (name, state), value in deliveries.items():
        key = (name, PUBLIC_STATE_OF.get(state, state))
        folded[key] = folded.get(key, 0) + value
    expected = {
        (name, state): value
        for name, figures in status["consumers"].items()
        for state, value in figures.items()
        if state in Delivery.State.values
    }
    assert folded == expected
    assert deliveries[("indexing", "dead")] == 1
    assert deliveries[("audit", "retrying")] == 1
    oldest = {s.labels["consumer"]: s.value for s in samples["events_oldest_waiting_seconds"]}
    assert 600 <= oldest["audit"] < 900
    assert oldest["notifications"] == 0
    # Latency: every done delivery of the last hour, from the event to its completion.
    # The Prometheus text format writes a gauge histogram's count and sum as gauges.
    latency = [
        *samples["events_delivery_latency_seconds"],
        *samples["events_delivery_latency_seconds_gcount"],
        *samples["events_delivery_latency_seconds_gsum"],
    ]
    counts = {
        s.labels["consumer"]: s.value
        for s in latency
        if s.name == "events_delivery_latency_seconds_gcount"
    }
    done = {name: figures["done"] for name, figures in status["consumers"].items()}
    assert counts == done
    assert counts["notifications"] == 2
    infinite = {
        s.labels["consumer"]: s.value
        for s in latency
        if s.name == "events_delivery_latency_seconds_bucket" and s.labels["le"] == "+Inf"
    }
    assert infinite == done
    total_seconds = {
        s.labels["consumer"]: s.value
        for s in latency
        if s.name == "events_delivery_latency_seconds_gsum"
    }
    assert 0 < total_seconds["notifications"] < 120
