"""``/metrics``: the delivery ledger in the Prometheus text format, read at scrape time.

A custom collector rather than global gauges: the figures live in the database, which
every web process shares, so each scrape reads them fresh (five small queries) and
any process answers the same. Nothing is kept between scrapes.

``events_deliveries{consumer,state}``
    gauge, deliveries per stored state (``event_status`` folds ``running`` into ``pending``).
``events_oldest_waiting_seconds{consumer}``
    gauge, age of the oldest delivery neither done nor dead (0 when nothing waits).
``events_consumer_paused{consumer}``
    gauge, 1 while an operator has paused the consumer (``consumers pause``), else 0.
``events_breakers_open{consumer}``
    gauge, how many of the consumer's breakers are open (one per consumer, or per key:
    per webhook endpoint); 0 when none is.
``events_delivery_latency_seconds{consumer}``
    gauge histogram of the deliveries completed in the last ``LATENCY_WINDOW``, from the
    event's ``occurred_at`` to the delivery's ``completed_at``: ``_bucket{le}``,
    ``_gcount``, ``_gsum`` (events older than ``RECENT_EVENT_HORIZON`` are not read:
    see ``monitoring.selectors.recently_done``). A window, not a running total, so pruning the ledger never
    makes it go backwards; ``histogram_quantile`` reads the buckets directly (no ``rate``).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric

from monitoring.selectors import consumer_controls, ledger_by_consumer, recent_latency

LATENCY_WINDOW = dt.timedelta(hours=1)
# From a fast handler on an idle queue to a delivery that waited out an hour's outage.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class LedgerCollector:
    """Yields the ledger metrics; registered in a fresh registry for each scrape."""

    def describe(self) -> list[Metric]:
        # Nothing to describe up front: registering must not query the database.
        return []

    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        deliveries = GaugeMetricFamily(
            "events_deliveries",
            "Deliveries in the ledger per consumer and state (as event_status counts them).",
            labels=["consumer", "state"],
        )
        oldest = GaugeMetricFamily(
            "events_oldest_waiting_seconds",
            "Age of the oldest delivery neither done nor dead; 0 when nothing waits.",
            labels=["consumer"],
        )
        ledger = ledger_by_consumer()
        for name, figures in ledger.items():
            for state, count in figures.counts.items():
                deliveries.add_metric([name, state], count)
            oldest.add_metric([name], figures.oldest_waiting_seconds(now) or 0.0)
        yield deliveries
        yield oldest

        paused = GaugeMetricFamily(
            "events_consumer_paused",
            "1 while the consumer is paused (bin/manage consumers pause), else 0.",
            labels=["consumer"],
        )
        controls = consumer_controls(now)
        for name in ledger:
            paused.add_metric([name], 1.0 if controls[name]["paused"] else 0.0)
        breakers = GaugeMetricFamily(
            "events_breakers_open",
            "Open circuit breakers of the consumer (its own, or one per key); 0 when none.",
            labels=["consumer"],
        )
        for name in ledger:
            breakers.add_metric([name], float(len(controls[name]["breakers_open"])))
        yield paused
        yield breakers

        latency = GaugeHistogramMetricFamily(
            "events_delivery_latency_seconds",
            "Seconds from an event to its delivery being done, over the deliveries "
            f"completed in the last {int(LATENCY_WINDOW.total_seconds())} s.",
            labels=["consumer"],
        )
        recent = recent_latency(since=now - LATENCY_WINDOW, bounds=LATENCY_BUCKETS)
        for name in ledger:
            histogram = recent.get(name)
            counts = histogram.buckets if histogram else {}
            buckets = [(_bound(bound), counts.get(bound, 0)) for bound in LATENCY_BUCKETS]
            buckets.append(("+Inf", histogram.count if histogram else 0))
            latency.add_metric([name], buckets, histogram.sum_seconds if histogram else 0.0)
        yield latency


def _bound(seconds: float) -> str:
    return repr(float(seconds))


def render_metrics() -> bytes:
    """The current metrics in the Prometheus text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector())
    return generate_latest(registry)


def _authorized(request: HttpRequest, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    # Constant time: the comparison must not tell how much of a guess was right.
    return secrets.compare_digest(given.strip().encode(), token.encode())


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus scrape endpoint; 404 unless ``METRICS_TOKEN`` is set, then bearer-only."""
    token = settings.METRICS_TOKEN
    if not token:
        # Off unless configured: without a token it does not exist.
        raise Http404("metrics are off")
    if not _authorized(request, token):
        response = HttpResponse("a valid bearer token is required\n", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        response["Content-Type"] = "text/plain; charset=utf-8"
        return response
    return HttpResponse(render_metrics(), content_type=CONTENT_TYPE_LATEST)
