"""Domain signals, sent after the transaction that stored the event has committed."""

from django.dispatch import Signal

# Sent with ``envelope`` (events.schemas.Envelope) once the event is durable.
event_committed = Signal()
