"""Operators in control of a consumer: pause and resume it, close its breaker or have
the relay probe it now.

A paused consumer's deliveries wait without running, without counting an attempt and
without going dead: the claim statement refuses them (``events.delivery.CLAIM_SQL``), a
message that arrives meanwhile parks its delivery (no message out) and the relay leaves
the consumer out of its passes. ``resume`` clears the flag; the relay's next pass
publishes every parked delivery once, as it publishes any due delivery with no message
out. The state lives in ``ConsumerState``, in the database, so it holds on every host
and outlives worker restarts.

An open breaker (``events.breaker``) parks its deliveries the same way until a probe
succeeds. An operator who knows the dependency is back need not wait for the next probe:
``close_breaker`` closes it as a successful probe would, and ``probe_breaker`` makes the
probe due, so the relay's next pass sends one.

These are the kernel's services; ``housekeeping.controls`` runs them for the
``consumers`` command and the admin overview and records each in the audit log.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.db.models.functions import Now

from events.breaker import BreakerState, describe_key
from events.models import Breaker, ConsumerState, Delivery
from events.registry import Consumer, get_consumer

logger = logging.getLogger(__name__)

REASON_MAX_LENGTH = ConsumerState._meta.get_field("paused_reason").max_length


@dataclass(frozen=True)
class ResumeResult:
    """What ``resume_consumer`` did: whether it was paused, and the deliveries that
    waited with no message out, which the relay publishes on its next pass."""

    was_paused: bool
    parked: int


def _known(name: str) -> None:
    """``LookupError`` with the registered names unless ``name`` is a consumer here or
    one the database knows (a consumer paused before its code was retired)."""
    try:
        get_consumer(name)
    except LookupError:
        if not ConsumerState.objects.filter(name=name).exists():
            raise


@transaction.atomic
def pause_consumer(*, name: str, reason: str = "") -> ConsumerState:
    """Hold consumer ``name`` on every host until ``resume_consumer``.

    Pausing a paused consumer replaces its reason and keeps when it was paused (what
    ``event_status --check --max-paused-seconds`` measures). ``LookupError`` for a name
    no code registers.
    """
    get_consumer(name)
    if len(reason) > REASON_MAX_LENGTH:
        raise ValueError(f"the reason is longer than {REASON_MAX_LENGTH} characters")
    ConsumerState.objects.bulk_create([ConsumerState(name=name)], ignore_conflicts=True)
    state = ConsumerState.objects.select_for_update().get(name=name)
    changes = {"paused": True, "paused_reason": reason}
    if not state.paused:
        changes["paused_at"] = Now()
    ConsumerState.objects.filter(name=name).update(**changes)
    logger.warning("consumer %s paused%s", name, f": {reason}" if reason else "")
    return ConsumerState.objects.get(name=name)


@transaction.atomic
def resume_consumer(*, name: str) -> ResumeResult:
    """Let consumer ``name`` run again; the relay then publishes what waited, each once.

    ``LookupError`` for a name neither registered nor known to the database.
    """
    _known(name)
    was_paused = ConsumerState.objects.filter(name=name, paused=True).update(
        paused=False, paused_reason="", paused_at=None
    )
    parked = parked_deliveries(consumer=name).count()
    if was_paused:
        logger.warning("consumer %s resumed: %d deliveries waiting to be sent", name, parked)
    return ResumeResult(was_paused=bool(was_paused), parked=parked)


def paused_states() -> dict[str, ConsumerState]:
    """Consumer name → its ``ConsumerState``, for the paused consumers only."""
    return {state.name: state for state in ConsumerState.objects.filter(paused=True)}


def running_consumers(consumers: Sequence[Consumer]) -> list[Consumer]:
    """``consumers`` less the paused ones: those whose deliveries the relay may publish."""
    paused = set(ConsumerState.objects.filter(paused=True).values_list("name", flat=True))
    return [consumer for consumer in consumers if consumer.name not in paused]


def parked_deliveries(*, consumer: str, key: str | None = None) -> QuerySet[Delivery]:
    """``consumer``'s deliveries (under breaker ``key``, or any) that wait with no message
    out: those a pause or an open breaker parked, and retries not yet due."""
    deliveries = Delivery.objects.filter(
        consumer=consumer, state__in=Delivery.WAITING_STATES, enqueued_at__isnull=True
    )
    return deliveries if key is None else deliveries.filter(breaker_key=key)


class BreakerNotOpen(LookupError):
    """No open breaker of that name: it never opened, closed meanwhile, or the key is wrong."""


@dataclass(frozen=True)
class BreakerControl:
    """What ``close_breaker`` or ``probe_breaker`` did to breaker ``name``: ``parked``
    deliveries wait under it; ``paused``: its consumer is paused too, so they wait for
    ``resume`` whatever the breaker says."""

    name: str
    parked: int
    paused: bool


@transaction.atomic
def close_breaker(*, consumer: str, key: str = "") -> BreakerControl:
    """Close ``consumer``'s open breaker ``key`` as a successful probe would: the operator
    says the dependency is back. Everything parked under it, and every retry waiting
    under it, is due at once, so the relay's next pass sends it all, each once.

    If the dependency is still down, the breaker opens again after
    ``EVENTS_BREAKER_FAILURES`` failures (a few attempts more, none dead). ``LookupError``
    for an unknown consumer, ``BreakerNotOpen`` when that breaker is not open.
    """
    breaker = _open_breaker(consumer, key)
    Breaker.objects.filter(pk=breaker.pk).delete()
    waiting = parked_deliveries(consumer=consumer, key=key)
    # Retries that failed before it opened wait out their backoff otherwise.
    waiting.filter(retry_at__gt=Now()).update(retry_at=Now())
    done = _control_result(consumer, key, waiting.count())
    logger.warning(
        "breaker %s closed by an operator: %d parked deliveries are sent on the relay's next pass",
        done.name,
        done.parked,
    )
    return done


@transaction.atomic
def probe_breaker(*, consumer: str, key: str = "") -> BreakerControl:
    """Make ``consumer``'s open breaker ``key`` probe now: the relay's next pass sends one
    parked delivery as the probe, instead of at the next ``EVENTS_BREAKER_PROBE_SECONDS``.

    A success closes the breaker; a failure schedules the next probe an interval later,
    as always. With nothing parked, the next delivery to arrive is the probe.
    ``LookupError`` for an unknown consumer, ``BreakerNotOpen`` when it is not open.
    """
    breaker = _open_breaker(consumer, key)
    Breaker.objects.filter(pk=breaker.pk).update(probe_at=Now())
    done = _control_result(consumer, key, parked_deliveries(consumer=consumer, key=key).count())
    logger.warning(
        "breaker %s: an operator asked for a probe now (%d parked deliveries)",
        done.name,
        done.parked,
    )
    return done


def find_open_breaker(*, consumer: str, key: str = "") -> BreakerState:
    """``consumer``'s open breaker ``key``, as it is now (what an operator confirms before
    closing it); ``LookupError`` for an unknown consumer, ``BreakerNotOpen`` otherwise."""
    return BreakerState.of(_open_breaker(consumer, key, lock=False))


def _open_breaker(consumer: str, key: str, *, lock: bool = True) -> Breaker:
    """The open breaker (locked, in a transaction); ``LookupError``/``BreakerNotOpen``
    saying what is there instead."""
    _known(consumer)
    rows = Breaker.objects.select_for_update() if lock else Breaker.objects
    breaker = rows.filter(consumer=consumer, key=key).first()
    if breaker is not None and breaker.opened_at is not None:
        return breaker
    message = f"breaker {describe_key(consumer, key)} is not open"
    if breaker is not None:
        raise BreakerNotOpen(
            f"{message} ({breaker.failures} failures counted; it opens at "
            f"{settings.EVENTS_BREAKER_FAILURES})"
        )
    open_keys = Breaker.objects.filter(consumer=consumer, opened_at__isnull=False).order_by("key")
    others = [describe_key(consumer, k) for k in open_keys.values_list("key", flat=True)]
    raise BreakerNotOpen(f"{message} (open: {', '.join(others)})" if others else message)


def _control_result(consumer: str, key: str, parked: int) -> BreakerControl:
    paused = ConsumerState.objects.filter(name=consumer, paused=True).exists()
    return BreakerControl(name=describe_key(consumer, key), parked=parked, paused=paused)
