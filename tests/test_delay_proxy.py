"""The delaying TCP proxy (tests/delay_proxy.py) that stands in for ``tc netem`` where the
kernel has no sch_netem: it holds each chunk for its direction's delay and changes no
byte. Runs in this process (a thread), on loopback."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.delay_proxy import ProxyThread, Route


class EchoServer:
    """A TCP server on loopback that sends back every byte it gets, and closes its side
    once the peer closed its own."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(connection,), daemon=True).start()

    @staticmethod
    def _echo(connection: socket.socket) -> None:
        with connection:
            while data := connection.recv(65536):
                connection.sendall(data)
            connection.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@contextlib.contextmanager
def through_proxy(
    echo: EchoServer, *, to_server: float, to_client: float
) -> Iterator[socket.socket]:
    """A connection to ``echo`` through a delaying proxy with these delays."""
    route = Route("127.0.0.1", ("127.0.0.1", echo.port), to_server=to_server, to_client=to_client)
    with (
        ProxyThread([route]) as proxy,
        socket.create_connection(("127.0.0.1", proxy.ports[0])) as sock,
    ):
        yield sock


def round_trip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(65536)
        assert chunk, "the proxy closed the connection"
        received += chunk
    return received


def test_a_round_trip_through_the_proxy_takes_both_delays(echo):
    delay = 0.2
    started = time.monotonic()
    with through_proxy(echo, to_server=delay, to_client=delay) as sock:
        # The first request also waits for the handshake netem would have delayed (a
        # round trip), then makes its own round trip.
        assert round_trip(sock, b"ping") == b"ping"
        first = time.monotonic() - started
        started = time.monotonic()
        assert round_trip(sock, b"again") == b"again"
        second = time.monotonic() - started
    # Lower bounds only: the delay is added, never taken away.
    assert first >= 4 * delay
    assert second >= 2 * delay


def test_each_direction_has_its_own_delay(echo):
    # The web host's proxy delays only its answers (the controller's link has no netem).
    with through_proxy(echo, to_server=0, to_client=0.3) as sock:
        round_trip(sock, b"warm")
        started = time.monotonic()
        assert round_trip(sock, b"x") == b"x"
        assert time.monotonic() - started >= 0.3


def test_a_large_transfer_comes_back_byte_for_byte_and_the_close_goes_through(echo):
    data = os.urandom(8 * 1024 * 1024)
    received = bytearray()
    with through_proxy(echo, to_server=0.02, to_client=0.02) as sock:

        def read_all() -> None:
            while chunk := sock.recv(1 << 20):
                received.extend(chunk)

        reader = threading.Thread(target=read_all)
        reader.start()
        # Uneven writes: chunk boundaries differ on every hop.
        view, offset, size = memoryview(data), 0, 1
        while offset < len(data):
            sock.sendall(view[offset : offset + size])
            offset += size
            size = size * 7 % 200_003 + 1
        # Our close reaches the echo server through the proxy, and its close comes back:
        # the reader sees the end of the stream.
        sock.shutdown(socket.SHUT_WR)
        reader.join(timeout=60)
        assert not reader.is_alive()
    assert len(received) == len(data)
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
