"""Operators in control of a consumer: pause and resume it.

A paused consumer's deliveries wait without running, without counting an attempt and
without going dead: the claim statement refuses them (``events.delivery.CLAIM_SQL``), a
message that arrives meanwhile parks its delivery (no message out) and the relay leaves
the consumer out of its passes. ``resume`` clears the flag; the relay's next pass
publishes every parked delivery once, as it publishes any due delivery with no message
out. The state lives in ``ConsumerState``, in the database, so it holds on every host
and outlives worker restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from django.db import transaction
from django.db.models.functions import Now

from events.models import ConsumerState, Delivery
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
    parked = Delivery.objects.filter(
        consumer=name, state__in=Delivery.WAITING_STATES, enqueued_at__isnull=True
    ).count()
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
