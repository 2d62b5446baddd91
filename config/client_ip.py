"""The client address that sign-in lock-out (django-axes) counts.

Axes reads ``AXES_CLIENT_IP_CALLABLE`` before anything else, so this function decides
even if ``django-ipware`` is ever installed (with it, and no proxy count, axes would
believe a client's own ``X-Forwarded-For``, letting it dodge lock-out and lock out
addresses it names).
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def client_ip_address(request: HttpRequest) -> str | None:
    """``REMOTE_ADDR``, or behind ``AXES_IPWARE_PROXY_COUNT`` proxies the client they saw.

    Each proxy appends the address it received the request from to ``X-Forwarded-For``,
    so with N proxies in front of Django the client is the N-th entry from the right;
    everything left of it was written by the client and is ignored. A header with fewer
    entries than proxies, or an entry that is not an address, did not come through the
    proxies as configured, and ``REMOTE_ADDR`` is used.
    """
    remote_addr = request.META.get("REMOTE_ADDR")
    proxy_count = settings.AXES_IPWARE_PROXY_COUNT
    if not proxy_count:
        return remote_addr
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    hops = [hop for hop in hops if hop]
    if len(hops) < proxy_count:
        return remote_addr
    candidate = hops[-proxy_count]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return remote_addr
