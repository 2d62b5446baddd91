"""Event envelope and the declared payload schema of each event type and version.

A producer declares its event types once (``uploads/events.py``); the registry here
validates payloads when they are published and upcasts stored older versions to the
current one before a handler sees them, so a year-old event can still be replayed.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from events.exceptions import InvalidEventError

JsonType = type | tuple[type, ...]
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Envelope:
    """One immutable fact, as stored in the event log and handed to handlers."""

    id: uuid.UUID
    type: str
    version: int
    occurred_at: dt.datetime
    aggregate_id: str
    actor: int | None
    payload: Mapping[str, Any]
    correlation_id: str = ""


@dataclass(frozen=True)
class EventSchema:
    """The payload of one event type at one version.

    ``fields`` maps each required key to its JSON type(s); ``optional`` likewise for
    keys that may be absent. ``upcast`` turns a payload of ``version - 1`` into this
    version's shape.
    """

    type: str
    version: int
    fields: Mapping[str, JsonType]
    optional: Mapping[str, JsonType] = field(default_factory=dict)
    upcast: Upcaster | None = None

    def validate(self, payload: Mapping[str, Any]) -> None:
        """Raise ``InvalidEventError`` unless ``payload`` has exactly this shape."""
        if not isinstance(payload, Mapping):
            raise InvalidEventError(f"{self.type} v{self.version}: payload must be an object")
        missing = sorted(set(self.fields) - set(payload))
        if missing:
            raise InvalidEventError(
                f"{self.type} v{self.version}: missing payload field(s) {', '.join(missing)}"
            )
        unknown = sorted(set(payload) - set(self.fields) - set(self.optional))
        if unknown:
            raise InvalidEventError(
                f"{self.type} v{self.version}: unknown payload field(s) {', '.join(unknown)}"
            )
        for key, value in payload.items():
            expected = self.fields.get(key) or self.optional[key]
            # bool is an int in Python but not in a schema that says "integer".
            if not isinstance(value, expected) or (
                isinstance(value, bool) and bool not in _as_tuple(expected)
            ):
                raise InvalidEventError(
                    f"{self.type} v{self.version}: field {key!r} must be "
                    f"{_type_names(expected)}, got {type(value).__name__}"
                )


def _as_tuple(types: JsonType) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types: JsonType) -> str:
    return " or ".join(t.__name__ for t in _as_tuple(types))


class SchemaRegistry:
    """Every declared (type, version); the highest version of a type is current."""

    def __init__(self) -> None:
        self._schemas: dict[str, dict[int, EventSchema]] = {}

    def declare(self, schema: EventSchema) -> EventSchema:
        """Declare a schema; versions of one type must be contiguous from 1."""
        versions = self._schemas.setdefault(schema.type, {})
        if schema.version in versions:
            if versions[schema.version] == schema:
                return schema
            raise ValueError(f"{schema.type} v{schema.version} is declared twice")
        if schema.version > 1 and schema.upcast is None:
            raise ValueError(
                f"{schema.type} v{schema.version} needs an upcaster from v{schema.version - 1}"
            )
        versions[schema.version] = schema
        return schema

    def types(self) -> list[str]:
        """All declared event types, sorted."""
        return sorted(self._schemas)

    def current_version(self, event_type: str) -> int:
        """The newest declared version of ``event_type``."""
        return max(self._versions(event_type))

    def get(self, event_type: str, version: int) -> EventSchema:
        """The schema of ``event_type`` at ``version``, or ``InvalidEventError``."""
        versions = self._versions(event_type)
        if version not in versions:
            raise InvalidEventError(
                f"unknown version {version} of event type {event_type!r} "
                f"(known: {', '.join(map(str, sorted(versions)))})"
            )
        return versions[version]

    def validate(self, event_type: str, version: int, payload: Mapping[str, Any]) -> None:
        """Check ``payload`` against the declared schema of that type and version."""
        self.get(event_type, version).validate(payload)

    def upcast(self, envelope: Envelope) -> Envelope:
        """Return ``envelope`` at the current version of its type, validated."""
        schema = self.get(envelope.type, envelope.version)
        schema.validate(envelope.payload)
        payload = dict(envelope.payload)
        current = self.current_version(envelope.type)
        for version in range(envelope.version + 1, current + 1):
            step = self.get(envelope.type, version)
            assert step.upcast is not None  # declare() enforces it
            payload = step.upcast(payload)
            step.validate(payload)
        return replace(envelope, version=current, payload=payload)

    def _versions(self, event_type: str) -> dict[int, EventSchema]:
        try:
            return self._schemas[event_type]
        except KeyError:
            raise InvalidEventError(f"unknown event type {event_type!r}") from None


schemas = SchemaRegistry()
