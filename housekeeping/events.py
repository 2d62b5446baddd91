"""The events housekeeping publishes: operators' bulk actions, for the audit log.

Only the audit consumer handles them (``audit/consumer.py``), so a bulk action is chained
into the audit log with who did it and what it selected.
"""

from __future__ import annotations

from events import EventSchema, schemas

OPERATOR_REDRIVE = "operator.redrive"

schemas.declare(
    EventSchema(
        type=OPERATOR_REDRIVE,
        version=1,
        fields={
            # The id of this bulk redrive (also the event's aggregate id).
            "redrive_id": str,
            # The operator's username at the time (the event's actor is their user id).
            "operator": str,
            # The filter as ``housekeeping.redrive.RedriveFilter.to_json`` writes it.
            "filter": dict,
            # The number of deliveries the operator saw and confirmed.
            "confirmed_count": int,
        },
    )
)
