"""The HTTP client of webhook calls: SSRF guard, one total deadline per call.

**Resolve, check, then connect to the checked address.** ``GuardedBackend.connect_tcp``
resolves the host itself, refuses the call when any address is not public, and connects
to an address it checked (TLS still verifies, and SNI and ``Host`` still name, the
URL's host: httpcore takes both from the URL, not from the address connected to). So a
DNS answer that changes between the check and the connection (rebinding) cannot point
the call inside, and a private port is never connected to: an open and a closed one
look the same. Every address refusal raises ``AddressRefused(REFUSED)``, one text for
all, so an owner cannot map the inside from the errors. ``check_url`` does the same when
an endpoint is added. ``WEBHOOKS_ALLOW_PRIVATE_ADDRESSES=true`` lifts the address check
(tests, local receivers).

**A deadline for the whole call.** Read timeouts bound each read, not the call: a
receiver dripping a byte per second never trips them. The backend therefore arms a
timer per connection that shuts the socket down when the call's deadline passes; the
blocked read or write returns at once and the caller reports a deadline failure. DNS
resolution runs under the same deadline.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from django.conf import settings

ALLOWED_SCHEMES = ("http", "https")
# The one answer to every address refusal (at add and at send): which check failed, and
# whether a port was open, is not for the owner to learn.
REFUSED = "refused: the URL must point to a public address"
# Beyond the global-unicast test of ``ipaddress``: ranges that reach IPv4 (or a private
# network) through a translation or tunnel, and shared or test ranges some Python
# versions count as global.
DENIED_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "2002::/16",  # 6to4: embeds any IPv4 address, 127.0.0.1 included
        "64:ff9b::/96",  # NAT64 well-known prefix
        "64:ff9b:1::/48",  # NAT64 local use
        "2001::/32",  # Teredo
        "::/96",  # IPv4-compatible (deprecated)
        "fec0::/10",  # site-local (deprecated)
        "100.64.0.0/10",  # carrier-grade NAT
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
    )
)


class AddressRefused(Exception):
    """The URL is not one webhooks may call (its text never includes the URL)."""


def allow_private_addresses() -> bool:
    """``WEBHOOKS_ALLOW_PRIVATE_ADDRESSES``: whether loopback and private networks are allowed."""
    return bool(getattr(settings, "WEBHOOKS_ALLOW_PRIVATE_ADDRESSES", False))


def refused_address(address: str) -> str | None:
    """Why ``address`` (an IP) must not be called, or ``None`` when it is public.

    The reason is for logs and tests; owners only ever see ``REFUSED``.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return f"{address} is a {kind.replace('_', '-')} address"
    for network in DENIED_NETWORKS:
        if ip.version == network.version and ip in network:
            return f"{address} is in {network}"
    if not ip.is_global:
        return f"{address} is not a public address"
    return None


def check_url(url: str, *, timeout: float = 5.0) -> None:
    """Raise ``AddressRefused`` unless ``url`` is http(s), without credentials, to public addresses.

    Any resolution failure is the same ``REFUSED`` as a private address, so names that
    exist only inside cannot be told from names that do not exist.
    """
    parts = urlsplit(url)
    if parts.scheme not in ALLOWED_SCHEMES:
        raise AddressRefused(f"only {' and '.join(ALLOWED_SCHEMES)} URLs are allowed")
    refuse_credentials(url)
    if not parts.hostname:
        raise AddressRefused("the URL has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise AddressRefused("the URL's port is not a number from 0 to 65535") from None
    if allow_private_addresses():
        return
    try:
        addresses = resolve(parts.hostname, port, timeout=timeout)
    except OSError:
        raise AddressRefused(REFUSED) from None
    if any(refused_address(address) for address in addresses):
        raise AddressRefused(REFUSED)


def refuse_credentials(url: str) -> None:
    """Raise ``AddressRefused`` for a URL with ``user:password@`` (they would reach logs)."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise AddressRefused(
            "URLs with user:password@ are not accepted: check the webhook signature instead"
        )


def resolve(host: str, port: int, *, timeout: float) -> list[str]:
    """The addresses of ``host``, in the resolver's order; ``socket.timeout`` past ``timeout``.

    The system resolver takes no timeout, so it runs in a daemon thread that is left
    behind if it hangs (it ends with the resolver's own timeout).
    """
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    found: list[Any] = []

    def lookup() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP))
        except (OSError, UnicodeError) as exc:
            found.append(exc)

    thread = threading.Thread(target=lookup, name="webhook-resolve", daemon=True)
    thread.start()
    thread.join(max(timeout, 0))
    if not found:
        raise TimeoutError("name resolution took longer than the call's deadline")
    if isinstance(found[0], BaseException):
        raise OSError("name resolution failed") from found[0]
    addresses = list(dict.fromkeys(info[4][0] for info in found[0]))
    if not addresses:
        raise OSError("name resolution found no address")
    return addresses


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's socket backend: checked addresses only, every socket cut at ``deadline``.

    ``deadline`` is a ``time.monotonic()`` value. ``close()`` disarms the timers.
    """

    def __init__(self, *, deadline: float) -> None:
        self._backend = httpcore.SyncBackend()
        self.deadline = deadline
        self._armed: list[tuple[threading.Timer, int]] = []
        self._lock = threading.Lock()

    def remaining(self) -> float:
        """Seconds left before the deadline (never below zero)."""
        return max(0.0, self.deadline - time.monotonic())

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        budget = min(timeout if timeout is not None else float("inf"), self.remaining())
        if budget <= 0:
            raise httpcore.ConnectTimeout("the call's deadline passed before connecting")
        try:
            addresses = resolve(host, port, timeout=budget)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from None
        if not allow_private_addresses() and any(refused_address(a) for a in addresses):
            raise AddressRefused(REFUSED)
        failure: Exception = httpcore.ConnectError("no address to connect to")
        for address in addresses:
            try:
                stream = self._backend.connect_tcp(
                    address,
                    port,
                    timeout=min(budget, self.remaining()),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            self._arm(stream.get_extra_info("socket"))
            return stream
        raise failure

    def _arm(self, sock: socket.socket) -> None:
        # A duplicate descriptor of the same socket: TLS wraps the original in a new
        # object, but shutting the socket down through either ends every read and write.
        duplicate = os.dup(sock.fileno())
        timer = threading.Timer(self.remaining(), _shut_down, args=(duplicate,))
        timer.daemon = True
        with self._lock:
            self._armed.append((timer, duplicate))
        timer.start()

    def close(self) -> None:
        """Disarm every timer and release the duplicate descriptors."""
        with self._lock:
            armed, self._armed = self._armed, []
        for timer, duplicate in armed:
            timer.cancel()
            timer.join()
            with contextlib.suppress(OSError):
                os.close(duplicate)

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise AddressRefused(REFUSED)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _shut_down(duplicate: int) -> None:
    """The deadline passed: end the connection under whatever is reading or writing it."""
    try:
        sock = socket.socket(fileno=os.dup(duplicate))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed
    finally:
        sock.close()


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport over ``GuardedBackend``: no proxies, no retries, one connection."""

    def __init__(self, *, deadline: float) -> None:
        super().__init__(retries=0)
        self.backend = GuardedBackend(deadline=deadline)
        # httpx takes no network backend itself; its pool is httpcore's, which does.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=1,
            retries=0,
            network_backend=self.backend,
        )

    def close(self) -> None:
        super().close()
        self.backend.close()

    def __exit__(self, *exc_info: Any) -> None:
        # httpx.Client.__exit__ exits the transport without calling close().
        super().__exit__(*exc_info)
        self.backend.close()


def client(*, connect_timeout: float, read_timeout: float, deadline: float) -> httpx.Client:
    """An ``httpx.Client`` for one webhook call: guarded, cut at ``deadline`` (monotonic).

    No redirects, no environment proxies; each timeout is also capped by the deadline.
    """
    budget = max(0.0, deadline - time.monotonic())
    return httpx.Client(
        transport=GuardedTransport(deadline=deadline),
        timeout=httpx.Timeout(
            min(read_timeout, budget), connect=min(connect_timeout, budget), pool=budget
        ),
        follow_redirects=False,
        trust_env=False,
    )
