"""The kernel's stated consumer API and the in-process test helpers it ships."""

from __future__ import annotations

import pytest

import events
from events.models import Delivery
from events.testing import deliver, drain
from tests.probe.handlers import PROBE_EVENT
from tests.probe.models import ProbeEffect


def test_consumer_api_imports_from_the_package():
    from events import (  # noqa: F401
        Consumer,
        DeliveryBusy,
        Envelope,
        PermanentError,
        TransientError,
        TwoStepHandler,
        register_consumer,
    )

    for name in events.__all__:
        assert getattr(events, name) is not None, name


def test_all_lists_the_consumer_api():
    assert {
        "Consumer",
        "register_consumer",
        "TwoStepHandler",
        "Envelope",
        "PermanentError",
        "TransientError",
        "DeliveryBusy",
    } <= set(events.__all__)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        events.no_such_thing  # noqa: B018


def test_deliver_runs_the_handler_through_the_claim_and_finish(db):
    outcome = deliver(PROBE_EVENT, {"key": "k1"}, consumer="probe")

    assert outcome.outcome == "done"
    delivery = Delivery.objects.get(consumer="probe", event__payload__key="k1")
    assert (delivery.state, delivery.attempts) == (Delivery.State.DONE, 1)
    assert ProbeEffect.objects.filter(event_id=delivery.event_id, consumer="probe").count() == 1


def test_deliver_records_a_transient_failure_as_a_retry(db):
    outcome = deliver(
        PROBE_EVENT, {"key": "k2", "transient_failures": {"probe": 1}}, consumer="probe"
    )

    assert outcome.outcome == "retry"
    delivery = Delivery.objects.get(consumer="probe", event__payload__key="k2")
    assert delivery.state == Delivery.State.RETRYING
    assert not ProbeEffect.objects.filter(event_id=delivery.event_id).exists()


def test_deliver_sends_a_permanent_failure_dead(db):
    outcome = deliver(PROBE_EVENT, {"key": "k3", "permanent_failures": ["probe"]}, consumer="probe")

    assert outcome.outcome == "dead"
    assert Delivery.objects.get(consumer="probe", event__payload__key="k3").state == "dead"


def test_deliver_refuses_a_consumer_that_does_not_subscribe(db):
    with pytest.raises(LookupError, match="does not subscribe"):
        deliver(PROBE_EVENT, {"key": "k4"}, consumer="audit")


def test_drain_with_retries_runs_until_the_handler_succeeds(db):
    deliver(PROBE_EVENT, {"key": "k5", "transient_failures": {"probe_peer": 2}}, consumer="probe")

    outcomes = drain("probe_peer", with_retries=True)

    assert [o.outcome for o in outcomes] == ["retry", "retry", "done"]
    delivery = Delivery.objects.get(consumer="probe_peer", event__payload__key="k5")
    assert (delivery.state, delivery.attempts) == (Delivery.State.DONE, 3)
    effects = ProbeEffect.objects.filter(event_id=delivery.event_id, consumer="probe_peer")
    assert effects.count() == 1


def test_drain_without_retries_runs_each_waiting_delivery_once(db):
    deliver(PROBE_EVENT, {"key": "k6", "transient_failures": {"probe_peer": 2}}, consumer="probe")

    assert [o.outcome for o in drain("probe_peer")] == ["retry"]
    assert [o.outcome for o in drain("probe_peer")] == ["retry"]
    assert [o.outcome for o in drain("probe_peer")] == ["done"]
    assert drain("probe_peer") == []


def test_drain_names_the_known_consumers_when_one_is_unknown(db):
    with pytest.raises(LookupError, match="known:"):
        drain("nope")
