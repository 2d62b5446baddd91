"""A TCP proxy that delays every byte, for latency where the kernel has no ``tc netem``.

Each route listens on an address (the port is the kernel's choice) and forwards every
connection to an upstream server, both ways, changing no byte. What it reads from the
client is written upstream ``to_server`` seconds later, and what the server answers is
written back ``to_client`` seconds later: a chunk read at t leaves at t + delay, in
order, while the chunks read after it are already being held (a path with latency, not
one chunk per delay). The kernel accepts a connection at once, where netem would have
delayed the handshake by a round trip; so the client's first bytes are held until that
round trip has passed, as if its ``connect`` had returned then. A half close (EOF) goes
through in order, after the bytes before it; a reset on either side ends both.

Which delays reproduce netem on every host's link, and what they cannot reproduce:
docs/several-hosts.md ("Latency"). ``tests/hosts.py`` runs this module on the hosts:

    python -m tests.delay_proxy --ports-file PATH \\
        --route LISTEN_ADDRESS UPSTREAM_ADDRESS:PORT TO_SERVER_MS TO_CLIENT_MS [--route ...]

which writes the listening ports, in route order, to ``PATH`` as a JSON list once every
route listens. ``ProxyThread`` serves routes from a thread of the calling process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Bytes asked of the socket at a time, and how many chunks a direction may hold before
# it stops reading (TCP's flow control then slows the sender, as a full queue would).
CHUNK = 64 * 1024
MAX_HELD = 1024


@dataclass(frozen=True)
class Route:
    """Listen on ``listen`` (any free port), forward to ``upstream``; delays in seconds."""

    listen: str
    upstream: tuple[str, int]
    to_server: float = 0.0
    to_client: float = 0.0


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, not_before: float
) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay`` s after it was read (and not
    before ``not_before`` + ``delay``), then pass the end of the stream on."""
    loop = asyncio.get_running_loop()
    held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(MAX_HELD)

    async def take() -> None:
        while True:
            data = await reader.read(CHUNK)
            await held.put((max(loop.time(), not_before) + delay, data))
            if not data:
                return

    async def give() -> None:
        while True:
            due, data = await held.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    async with asyncio.TaskGroup() as group:
        group.create_task(take())
        group.create_task(give())


async def _forward(
    route: Route, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
) -> None:
    loop = asyncio.get_running_loop()
    # Under netem the client could send only once the handshake had gone and come back.
    handshake_done = loop.time() + route.to_server + route.to_client
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(*route.upstream)
    except OSError:
        client_writer.transport.abort()
        return
    writers = (client_writer, upstream_writer)
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(
                _pump(client_reader, upstream_writer, route.to_server, handshake_done)
            )
            group.create_task(_pump(upstream_reader, client_writer, route.to_client, 0.0))
    except* OSError:
        # One side reset (or vanished): the other learns it the same way.
        for writer in writers:
            writer.transport.abort()
    else:
        for writer in writers:
            writer.close()


async def serve(routes: Sequence[Route]) -> list[asyncio.Server]:
    """Start listening for every route; the servers, in route order."""
    servers = []
    for route in routes:

        async def handle(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, route: Route = route
        ) -> None:
            await _forward(route, reader, writer)

        servers.append(await asyncio.start_server(handle, route.listen, 0))
    return servers


def ports_of(servers: Sequence[asyncio.Server]) -> list[int]:
    """The port each server listens on."""
    return [server.sockets[0].getsockname()[1] for server in servers]


class ProxyThread:
    """``routes`` served by a thread of this process from ``start`` to ``stop`` (or for
    a ``with`` block); ``ports`` are their listening ports, in route order."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = list(routes)
        self.ports: list[int] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[asyncio.Server] = []

    def start(self) -> ProxyThread:
        """Listen on every route; returns once they all do."""
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(serve(self.routes), self._loop)
        self._servers = started.result(timeout=10)
        self.ports = ports_of(self._servers)
        return self

    def stop(self) -> None:
        """Close the listeners and every connection (both sides), and end the thread."""
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> ProxyThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _close(self) -> None:
        for server in self._servers:
            server.close()
        current = asyncio.current_task()
        connections = [task for task in asyncio.all_tasks() if task is not current]
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)


def _route(values: Sequence[str]) -> Route:
    listen, upstream, to_server_ms, to_client_ms = values
    host, _, port = upstream.rpartition(":")
    return Route(listen, (host, int(port)), float(to_server_ms) / 1000, float(to_client_ms) / 1000)


async def _main(routes: Sequence[Route], ports_file: Path) -> None:
    servers = await serve(routes)
    # Whole or absent: the parent polls for the file.
    partial = ports_file.with_suffix(".partial")
    partial.write_text(json.dumps(ports_of(servers)))
    os.replace(partial, ports_file)
    await asyncio.Event().wait()  # until killed


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the routes of the command line until killed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--route",
        nargs=4,
        action="append",
        required=True,
        metavar=("LISTEN_ADDRESS", "UPSTREAM", "TO_SERVER_MS", "TO_CLIENT_MS"),
    )
    parser.add_argument("--ports-file", type=Path, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main([_route(values) for values in args.route], args.ports_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
