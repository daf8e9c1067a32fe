"""The client's IP: the direct peer, or what a trusted proxy says in X-Forwarded-For."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Networks(tuple):
    """Parsed networks, hashed by identity: `client_ip`'s cache hashes them on every call, and
    hashing each network (Python code in ipaddress) cost more than the cache saved."""

    __slots__ = ()
    __hash__ = object.__hash__
    __eq__ = object.__eq__
    __ne__ = object.__ne__


def parse_networks(cidrs: Iterable[str]) -> Networks:
    return Networks(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def _trusted(ip: str, networks: tuple[Network, ...]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in networks)


@lru_cache(maxsize=8192)
def client_ip(peer: str, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """Walk X-Forwarded-For from the right past trusted proxies; the first other hop is the client.

    Headers from untrusted peers are ignored, so a browser cannot choose its own IP. Cached:
    parsing addresses costs more than the rest of a hit's network handling.
    """
    if not forwarded_for or not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    nearest = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return nearest  # garbage: believe nothing left of it
        if not _trusted(hop, trusted):
            return hop
        nearest = hop
    return nearest
