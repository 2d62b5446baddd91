"""Log records that say which request, command or task they belong to.

``CorrelationFilter`` (on the handler, so it sees records from every logger) adds
``correlation_id``, ``task_id`` and ``task_name`` to each record. ``JsonFormatter``
writes one JSON object per line (``LOG_FORMAT=json``), for log shippers; the plain
format shows the same fields in brackets.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from config.correlation import current_task, get_correlation_id

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "correlation_id",
    "task_id",
    "task_name",
    "task_label",
}


class CorrelationFilter(logging.Filter):
    """Add ``correlation_id``, ``task_id`` and ``task_name`` to every record; never drops one.

    Values a caller passed with ``extra=`` are kept. A record about a request
    (``django.request`` and ``django.server`` pass ``extra={"request": ...}``) takes that
    request's id: Django logs a 4xx or 5xx response after the middleware that scopes the
    id has returned, where only the process's fallback id would be current.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "correlation_id", ""):
            request_id = getattr(getattr(record, "request", None), "correlation_id", "")
            record.correlation_id = request_id or get_correlation_id()
        task_id, task_name = current_task()
        if not getattr(record, "task_id", ""):
            record.task_id = task_id
        if not getattr(record, "task_name", ""):
            record.task_name = task_name
        # For the plain format: " indexing.handle_event[<task id>]" inside a task.
        record.task_label = f" {record.task_name}[{record.task_id}]" if record.task_id else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, ids, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName,
            "pid": record.process,
            "correlation_id": getattr(record, "correlation_id", ""),
        }
        for key in ("task_id", "task_name"):
            if getattr(record, key, ""):
                entry[key] = getattr(record, key)
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # default=str: an odd object in ``extra`` must never lose the line.
        return json.dumps(entry, default=str, ensure_ascii=False)
