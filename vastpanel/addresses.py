"""Who a request comes from: its client's address behind the listed proxies, and the group of
addresses that counts as one client.

FORWARDED_ALLOW_IPS names the reverse proxies (addresses or networks; gunicorn believes their
X-Forwarded-Proto). From a listed proxy, the client is the rightmost X-Forwarded-For address
that is not a listed proxy: each proxy appends the address it was reached from, so that one was
written by a proxy the panel trusts, and everything left of it by the client, who may write
anything. A peer that is not a listed proxy is the client, whatever its headers say. `*` lists
every peer, and believes only the address it appended itself.

`ClientAddress` puts that address in the request's REMOTE_ADDR, so that the lockout, the
/metrics loopback rule, the audit and the access log all see the same client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

DEFAULT_PROXIES = ("127.0.0.1", "::1")
ANY_PEER = "*"
PEER_ADDR = "vastpanel.peer_addr"  # the environ key that keeps the connection's own address

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str) -> Address | None:
    """Return the IP address text names (an IPv4-mapped IPv6 one as IPv4), or None."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The listed proxies: addresses and networks, or every peer (`*`)."""

    def __init__(self, entries: Iterable[str]):
        entries = [e.strip() for e in entries if e.strip()]
        self.any_peer = ANY_PEER in entries
        self.networks = [ipaddress.ip_network(e) for e in entries if e != ANY_PEER]

    def __contains__(self, address: object) -> bool:
        """Tell whether an address (text or parsed) is a listed proxy."""
        parsed = parse_address(address) if isinstance(address, str) else address
        if parsed is None:
            return False
        return self.any_peer or any(parsed in network for network in self.networks)

    def client(self, peer: str, forwarded_for: str | None) -> str:
        """Return the client's address: the peer's own, or what listed proxies say of it."""
        if not forwarded_for or peer not in self:
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",")]
        if self.any_peer:
            # Every peer is a proxy, but which hops to its left are is unknown: only the one
            # it appended itself is believed.
            return str(parse_address(hops[-1]) or peer)
        client = peer
        for hop in reversed(hops):
            address = parse_address(hop)
            if address is None:
                # Not an address: the proxy that passed it on did not write it, so nothing
                # further left can be believed either.
                return client
            client = str(address)
            if address not in self:
                return client
        return client  # every hop is a listed proxy: the leftmost is the client


def client_group(address: str | None) -> str:
    """Return who an address counts as: itself for IPv4, its /64 for IPv6, else "unknown".

    One host usually holds a whole IPv6 /64, so counting single addresses would let it pass
    as many clients.
    """
    parsed = parse_address(address or "")
    if parsed is None:
        return "unknown"
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


class ClientAddress:
    """WSGI middleware: REMOTE_ADDR becomes the client's address behind the listed proxies."""

    def __init__(self, app: Callable[..., Any], proxies: TrustedProxies):
        self.app = app
        self.proxies = proxies

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        peer = environ.get("REMOTE_ADDR") or ""
        environ[PEER_ADDR] = peer
        environ["REMOTE_ADDR"] = self.proxies.client(peer, environ.get("HTTP_X_FORWARDED_FOR"))
        return self.app(environ, start_response)
