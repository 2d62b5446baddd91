"""Small bar charts for the admin events overview, laid out here and drawn as inline SVG.

The server computes every bar's geometry; the template writes plain ``<rect>`` elements
with a ``<title>`` each (the browser shows it on hover). No JavaScript and nothing
fetched from anywhere, so the charts work offline and under a strict CSP.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from typing import Any

from django.utils import timezone

from monitoring.selectors import MinuteFigures, done_per_minute

WIDTH = 300
HEIGHT = 64
# Room at the top for the scale label, at the bottom for the time axis.
TOP = 12
BOTTOM = 12
MINUTES = 60


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value`` (1 for nothing): a round scale."""
    if value <= 0:
        return 1
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude  # pragma: no cover - the loop always returns


def bar_chart(values: Sequence[float], *, titles: Sequence[str], unit: str) -> dict[str, Any]:
    """Geometry of one bar per value, scaled to a round maximum; what the template draws."""
    scale = nice_ceiling(max(values, default=0))
    plot = HEIGHT - TOP - BOTTOM
    slot = WIDTH / max(len(values), 1)
    bars = []
    for index, (value, title) in enumerate(zip(values, titles, strict=True)):
        height = round(plot * value / scale, 2) if value else 0
        # A value too small to see still gets one pixel, so "some" never looks like "none".
        if value and height < 1:
            height = 1
        bars.append(
            {
                "x": round(index * slot, 2),
                "y": round(TOP + plot - height, 2),
                "width": round(max(slot - 1, 1), 2),
                "height": height,
                "value": value,
                "title": title,
            }
        )
    return {
        "bars": bars,
        "scale_label": f"{scale:g} {unit}",
        "width": WIDTH,
        "height": HEIGHT,
        "baseline": HEIGHT - BOTTOM,
        "axis_y": HEIGHT - 2,
    }


def _minute_titles(
    minutes: Sequence[dt.datetime],
    figures: dict[dt.datetime, MinuteFigures],
    describe: Callable[[MinuteFigures], str],
) -> list[str]:
    return [
        f"{minute:%H:%M}: {describe(figures[minute])}"
        if minute in figures
        else f"{minute:%H:%M}: none"
        for minute in minutes
    ]


def overview_charts(
    *, consumers: Sequence[str], now: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """Per consumer, the last hour minute by minute: deliveries done, and their latency.

    Latency is from the event to the delivery being done (the bar: the minute's
    average; the hover title also gives the longest).
    """
    now = now or timezone.now()
    last = now.replace(second=0, microsecond=0)
    minutes = [last - dt.timedelta(minutes=MINUTES - 1 - i) for i in range(MINUTES)]
    activity = done_per_minute(since=minutes[0])
    charts = []
    for name in consumers:
        figures = activity.get(name, {})
        done = [figures[m].done if m in figures else 0 for m in minutes]
        latency = [figures[m].avg_latency_seconds if m in figures else 0.0 for m in minutes]
        charts.append(
            {
                "consumer": name,
                "done_total": sum(done),
                "done": bar_chart(
                    done,
                    titles=_minute_titles(minutes, figures, lambda f: f"{f.done} done"),
                    unit="/min",
                ),
                "latency": bar_chart(
                    latency,
                    titles=_minute_titles(
                        minutes,
                        figures,
                        lambda f: (
                            f"avg {f.avg_latency_seconds:.3g} s, "
                            f"longest {f.max_latency_seconds:.3g} s ({f.done} done)"
                        ),
                    ),
                    unit="s",
                ),
                "start_label": f"{minutes[0]:%H:%M}",
                "end_label": f"{minutes[-1]:%H:%M}",
            }
        )
    return charts
