"""The node harness's network decisions: which address the node gets, and whether a route leaves the machine."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from license_keeper.testing.netguard import NodeUnavailable, choose_node_ip, route_leaves_machine

DEFAULT = {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"}
ETH0 = {"dst": "192.0.2.0/24", "dev": "eth0", "prefsrc": "192.0.2.2"}


def test_the_node_address_is_in_the_range_and_not_on_any_interface() -> None:
    ip = choose_node_ip([DEFAULT, ETH0], ["127.0.0.1", "192.0.2.2"], rng=random.Random(1))
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("10.255.255.0/24")


def test_an_address_held_by_an_interface_is_never_chosen() -> None:
    held = [f"10.255.255.{i}" for i in range(1, 254)]
    assert choose_node_ip([DEFAULT], held) == "10.255.255.254"


def test_an_address_covered_by_a_route_other_than_the_default_is_never_chosen() -> None:
    routes = [DEFAULT, {"dst": "10.255.255.0/25", "dev": "tun0"}, {"dst": "10.255.255.128/26", "via": "x"}]
    for seed in range(50):
        ip = ipaddress.ip_address(choose_node_ip(routes, [], rng=random.Random(seed)))
        assert ip >= ipaddress.ip_address("10.255.255.192"), ip


def test_a_host_route_counts_as_covering() -> None:
    routes = [DEFAULT, *({"dst": f"10.255.255.{i}", "dev": "eth0"} for i in range(1, 255) if i != 77)]
    assert choose_node_ip(routes, []) == "10.255.255.77"


def test_a_range_routed_elsewhere_as_a_whole_refuses_with_a_reason() -> None:
    with pytest.raises(NodeUnavailable, match=r"no free address in 10\.255\.255\.0/24"):
        choose_node_ip([DEFAULT, {"dst": "10.0.0.0/8", "gateway": "192.0.2.9", "dev": "eth0"}], [])


@given(
    held=st.sets(st.integers(1, 254), max_size=253),
    routed=st.lists(st.tuples(st.integers(0, 255), st.integers(24, 32)), max_size=4),
)
def test_the_choice_is_always_free(held: set[int], routed: list[tuple[int, int]]) -> None:
    routes = [DEFAULT] + [
        {"dst": str(ipaddress.ip_network(f"10.255.255.{host}/{bits}", strict=False))} for host, bits in routed
    ]
    nets = [ipaddress.ip_network(r["dst"]) for r in routes[1:]]
    addresses = [f"10.255.255.{i}" for i in held]
    try:
        ip = ipaddress.ip_address(choose_node_ip(routes, addresses))
    except NodeUnavailable:
        free = [
            h for h in ipaddress.ip_network("10.255.255.0/24").hosts()
            if str(h) not in addresses and not any(h in n for n in nets)
        ]  # fmt: skip
        assert not free
        return
    assert str(ip) not in addresses and not any(ip in n for n in nets)


@pytest.mark.parametrize(
    ("lookup", "dev", "why"),
    [
        ([{"dst": "10.0.0.1", "dev": "lk-node0", "prefsrc": "10.255.255.9"}], "lk-node0", None),
        ([{"dst": "10.244.0.254", "dev": "cni0"}], "cni0", None),
        ([{"dst": "10.0.0.1", "gateway": "192.0.2.1", "dev": "eth0"}], "lk-node0", "via gateway 192.0.2.1 on eth0"),
        ([{"dst": "10.244.0.254", "dev": "eth0"}], "cni0", "on eth0, not cni0"),
        ([], "cni0", "no route"),
    ],
)
def test_a_route_that_would_use_a_gateway_or_another_interface_leaves_the_machine(
    lookup: list[dict[str, str]], dev: str, why: str | None
) -> None:
    assert route_leaves_machine(lookup, expected_dev=dev) == why
