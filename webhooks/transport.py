"""An HTTP client that only talks to public addresses (SSRF guard), with short timeouts.

The check runs twice: when an endpoint is added (``check_url``: every address its host
resolves to) and on every send, against the address the socket actually connected to
(``GuardedBackend``), so a host that resolved to a public address when it was added and
to ``127.0.0.1`` now (DNS rebinding) is still refused, before a byte is sent.
``WEBHOOKS_ALLOW_PRIVATE_ADDRESSES=true`` lifts both checks (tests, local receivers).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from django.conf import settings

ALLOWED_SCHEMES = ("http", "https")


class AddressRefused(Exception):
    """The URL is not one webhooks may call: wrong scheme, or a non-public address."""


def allow_private_addresses() -> bool:
    """``WEBHOOKS_ALLOW_PRIVATE_ADDRESSES``: whether loopback and private networks are allowed."""
    return bool(getattr(settings, "WEBHOOKS_ALLOW_PRIVATE_ADDRESSES", False))


def refused_address(address: str) -> str | None:
    """Why ``address`` (an IP) must not be called, or ``None`` when it is public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "private", "link_local", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{kind}"):
            return f"{address} is a {kind.replace('_', '-')} address"
    if not ip.is_global:
        return f"{address} is not a public address"
    return None


def check_url(url: str) -> None:
    """Raise ``AddressRefused`` unless ``url`` is http(s) to a host with only public addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ALLOWED_SCHEMES:
        raise AddressRefused(f"only {' and '.join(ALLOWED_SCHEMES)} URLs are allowed")
    if not parts.hostname:
        raise AddressRefused("the URL has no host")
    if allow_private_addresses():
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (OSError, ValueError) as exc:
        raise AddressRefused(f"{parts.hostname} does not resolve: {exc}") from exc
    _refuse_any(parts.hostname, (info[4][0] for info in infos))


def _refuse_any(host: str, addresses: Iterable[str]) -> None:
    for address in addresses:
        reason = refused_address(address)
        if reason:
            raise AddressRefused(f"{host} resolves to {reason}")


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's socket backend that refuses a connection to a non-public peer address."""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )
        if not allow_private_addresses():
            peer = stream.get_extra_info("socket").getpeername()[0]
            reason = refused_address(peer)
            if reason:
                stream.close()
                raise AddressRefused(f"{host} connected to {reason}")
        return stream

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise AddressRefused("unix sockets are not allowed")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport over ``GuardedBackend``: no proxies, no retries, one connection."""

    def __init__(self) -> None:
        super().__init__(retries=0)
        # httpx takes no network backend itself; its pool is httpcore's, which does.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=1,
            retries=0,
            network_backend=GuardedBackend(),
        )


def client(*, connect_timeout: float, read_timeout: float) -> httpx.Client:
    """An ``httpx.Client`` for webhook calls: guarded, no redirects, no environment proxies."""
    return httpx.Client(
        transport=GuardedTransport(),
        timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        follow_redirects=False,
        trust_env=False,
    )
