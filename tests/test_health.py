"""``/health/``: database and broker reachability, 200 or 503, and nothing more."""

from __future__ import annotations

import pytest
from celery import current_app
from django.db import OperationalError

from config import health as views
from tests.processes import free_port


class _BrokenConnection:
    """Stands in for ``django.db.connection`` when the database is gone."""

    def cursor(self):
        raise OperationalError('connection to server at "db.internal" failed: password wrong')


@pytest.fixture
def unreachable_broker(monkeypatch) -> str:
    """Point the shared Celery app at a port nothing listens on; restored after the test."""
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    monkeypatch.setattr(current_app.conf, "broker_url", url)
    return url


def test_health_is_ok_when_database_and_broker_answer(client, db):
    response = client.get("/health/")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": True, "broker": True}
    assert "no-cache" in response["Cache-Control"]


def test_health_needs_no_login_and_accepts_only_get(client, db):
    assert client.get("/health/").status_code == 200
    assert client.post("/health/").status_code == 405


def test_health_is_503_when_the_broker_is_unreachable(client, db, unreachable_broker):
    response = client.get("/health/")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": True, "broker": False}
    assert b"s3cret" not in response.content


def test_health_follows_the_broker_url_at_call_time(client, db, monkeypatch, redis_server):
    url = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setattr(current_app.conf, "broker_url", url)
    assert client.get("/health/").status_code == 503

    monkeypatch.setattr(current_app.conf, "broker_url", redis_server.url)
    assert client.get("/health/").status_code == 200


def test_health_is_503_when_the_database_fails(client, db, monkeypatch):
    monkeypatch.setattr(views, "connection", _BrokenConnection())

    response = client.get("/health/")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": False, "broker": True}
    assert b"password" not in response.content
    assert b"db.internal" not in response.content


def test_health_is_503_when_both_fail(client, db, monkeypatch, unreachable_broker):
    monkeypatch.setattr(views, "connection", _BrokenConnection())

    response = client.get("/health/")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": False, "broker": False}
