"""Local addresses for stand-ins that EndpointSlices can name: the API server refuses loopback endpoints
(``may not be in the loopback range``), so tests of admin Service discovery need addresses that are not in
127.0.0.0/8 yet never leave this machine.

``LocalRange`` makes a whole /24 local with one route of type ``local`` on ``lo`` in the local table (Linux
"AnyIP"): every address in it can be bound and is delivered on this machine, as 127.0.0.0/8 is. The /24 is
chosen from ``LOCAL_RANGES`` where no route of any table covers it (so the node's own address, pod and Service
ranges are never touched), and removed again on exit; ``clear_leftovers()`` removes what a killed run left.

    with LocalRange() as local:
        local.address(1)       # "10.255.243.1": listen there, name it in an EndpointSlice

Needs root (CAP_NET_ADMIN), as the node harness does; without it, ``LocalRangeUnavailable`` says why.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Mapping
from typing import Any

from .netguard import NodeUnavailable, ip_json, run

__all__ = ["LOCAL_RANGES", "LocalRange", "LocalRangeUnavailable", "choose_local_range"]

# 10.255.240.0/24 .. 10.255.247.0/24: beside the node's 10.255.255.0/24, never overlapping it.
LOCAL_RANGES = tuple(f"10.255.{n}.0/24" for n in range(240, 248))
ROUTE_PROTOCOL = "252"  # marks our routes, so leftovers of a killed run are found and only ours are removed


class LocalRangeUnavailable(RuntimeError):
    """No local /24 can be made here (one line says why)."""


def _networks(routes: Iterable[Mapping[str, Any]]) -> list[ipaddress.IPv4Network]:
    nets = []
    for route in routes:
        dst = str(route.get("dst", ""))
        if dst and dst != "default" and ":" not in dst:
            nets.append(ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False))
    return nets


def choose_local_range(routes: Iterable[Mapping[str, Any]], rng: random.Random | None = None) -> str | None:
    """A /24 of LOCAL_RANGES that no route (any table, the default route aside) overlaps; None if none is free."""
    taken = _networks(routes)
    free = [r for r in LOCAL_RANGES if not any(ipaddress.ip_network(r).overlaps(n) for n in taken)]
    return (rng or random.Random()).choice(free) if free else None


class LocalRange:
    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng
        self.network: ipaddress.IPv4Network | None = None

    def address(self, n: int) -> str:
        """The n-th address of the range (1..254)."""
        if self.network is None or not 1 <= n <= 254:
            raise ValueError(f"no local address {n}")
        return str(self.network.network_address + n)

    def __enter__(self) -> LocalRange:
        try:
            chosen = choose_local_range(ip_json("route", "show", "table", "all"), self.rng)
            if chosen is None:
                raise LocalRangeUnavailable(f"every one of {', '.join(LOCAL_RANGES)} is routed already")
            run("ip", "route", "add", "local", chosen, "dev", "lo", "table", "local", "proto", ROUTE_PROTOCOL)
        except (NodeUnavailable, OSError) as e:
            raise LocalRangeUnavailable(f"cannot make local addresses for the stand-ins (root needed): {e}") from None
        self.network = ipaddress.IPv4Network(chosen)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.network is not None:
            run("ip", "route", "del", "local", str(self.network), "dev", "lo", "table", "local", check=False)
            self.network = None

    @staticmethod
    def clear_leftovers() -> None:
        """Remove local routes a killed run left (ours only: LOCAL_RANGES, our protocol mark)."""
        for route in ip_json("route", "show", "table", "local", "proto", ROUTE_PROTOCOL):
            dst = str(route.get("dst", ""))
            if f"{dst}" in LOCAL_RANGES or f"{dst}/24" in LOCAL_RANGES:
                run("ip", "route", "del", "local", dst, "dev", "lo", "table", "local", check=False)
