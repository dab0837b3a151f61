"""Keeps a test node's traffic on this machine: the node's own address, and routes that end here.

A node's pod and Service ranges are private ranges. A packet to them that nothing on the node takes (kube-proxy
not running yet, or stopped in a node-restart test) would follow the default route off the machine, and so
would anything a pod forwards. Before a node starts, ``NetworkGuard.up()``:

* chooses the node's address: a /32 from ``NODE_RANGE`` that no interface holds and no route but the default
  covers, put on a link of its own (``dummy``, else ``ifb``: an ``ifb`` that is up drops what is routed to
  it). The API server, the kubelet and the stand-ins pods reach listen there: nothing outside can reach them;
* routes the Service range onto that link and gives the pod range its bridge, with the gateway address,
  before any pod exists;
* drops every packet forwarded from the pod bridge to any other interface (the CNI config has no ipMasq);
* refuses to go on when a route for either range would still use a gateway.

``down()`` undoes all of it, and puts back the kernel settings the node's components change. The decisions
(which address, does a route leave the machine) are pure functions over ``ip -json`` output.
"""

from __future__ import annotations

import ipaddress
import json
import random
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BRIDGE",
    "GUARD_COMMENT",
    "LINK",
    "NODE_RANGE",
    "POD_RANGE",
    "SYSCTLS",
    "NetworkGuard",
    "NodeUnavailable",
    "choose_node_ip",
    "route_leaves_machine",
]

NODE_RANGE = "10.255.255.0/24"
POD_RANGE = "10.244.0.0/24"
LINK = "lk-node0"
BRIDGE = "cni0"
GUARD_COMMENT = "license-keeper: nothing forwarded off the pod bridge"
# Set by the harness, the kubelet (it rewrites the first three at start) and kube-proxy; put back by down().
SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.bridge.bridge-nf-call-iptables",
    "net.ipv4.conf.all.route_localnet",
    "vm.overcommit_memory",
    "kernel.panic",
    "kernel.panic_on_oops",
)


class NodeUnavailable(RuntimeError):
    """This machine cannot run a test node (one line says why)."""


# --- decisions -------------------------------------------------------------------------------------------


def _covering_routes(routes: Iterable[Mapping[str, Any]]) -> list[ipaddress.IPv4Network]:
    nets = []
    for r in routes:
        dst = str(r.get("dst", ""))
        if dst and dst != "default":
            nets.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False))
    return [n for n in nets if n.version == 4]


def choose_node_ip(
    routes: Iterable[Mapping[str, Any]],
    addresses: Iterable[str],
    *,
    within: str = NODE_RANGE,
    rng: random.Random | None = None,
) -> str:
    """An address of ``within`` that no interface holds and that no route other than the default covers.

    ``routes`` is ``ip -json route show`` (every table that matters for a lookup: main); ``addresses`` every
    IPv4 address on the machine. Random among the free ones, so two machines' harnesses never agree by
    accident on a hard-coded address someone else uses.
    """
    taken = {ipaddress.ip_address(a) for a in addresses}
    covered = _covering_routes(routes)
    free = [
        ip
        for ip in ipaddress.ip_network(within).hosts()
        if ip not in taken and not any(ip in net for net in covered)
    ]
    if not free:
        raise NodeUnavailable(f"no free address in {within}: every one is held or routed on this machine")
    return str((rng or random.Random()).choice(free))


def route_leaves_machine(lookup: Sequence[Mapping[str, Any]], *, expected_dev: str) -> str | None:
    """Why a route lookup (``ip -json route get``) would send the packet off the machine, or None."""
    if not lookup:
        return "no route"
    hop = lookup[0]
    if hop.get("gateway"):
        return f"via gateway {hop['gateway']} on {hop.get('dev')}"
    if hop.get("dev") != expected_dev:
        return f"on {hop.get('dev')}, not {expected_dev}"
    return None


# --- I/O -------------------------------------------------------------------------------------------------


def run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise NodeUnavailable(f"{' '.join(argv)}: {(done.stderr or done.stdout).strip()[-300:]}")
    return done


def ip_json(*argv: str) -> list[dict[str, Any]]:
    out = run("ip", "-json", *argv).stdout.strip()
    return list(json.loads(out)) if out else []


def local_ipv4_addresses() -> list[str]:
    return [a["local"] for link in ip_json("-4", "addr", "show") for a in link.get("addr_info", [])]


def sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctl(name: str) -> str | None:
    path = sysctl_path(name)
    return path.read_text().strip() if path.exists() else None


def write_sysctl(name: str, value: str) -> None:
    sysctl_path(name).write_text(value)


def link_exists(name: str) -> bool:
    return run("ip", "link", "show", name, check=False).returncode == 0


FORWARD_RULE = ("FORWARD", "-i", BRIDGE, "!", "-o", BRIDGE, "-m", "comment", "--comment", GUARD_COMMENT, "-j", "DROP")


@dataclass
class NetworkGuard:
    """The node's address and the routes and rule that keep its traffic here; see the module's text."""

    service_range: str
    # The kernel settings as they were before the first node started; kept on disk until down(), so a
    # run that was killed still gets them back from the next one.
    state_file: Path
    pod_range: str = POD_RANGE
    node_ip: str = ""
    sysctls: dict[str, str] = field(default_factory=dict)

    @property
    def pod_gateway(self) -> str:
        return str(next(ipaddress.ip_network(self.pod_range).hosts()))

    def up(self) -> NetworkGuard:
        self.clear_leftovers()
        self.node_ip = choose_node_ip(ip_json("route", "show"), local_ipv4_addresses())
        self._make_link()
        self._make_bridge()  # before reading: net.bridge.* exists once a bridge does
        self._record_sysctls()
        run("iptables", "-w", "5", "-I", *FORWARD_RULE)
        write_sysctl("net.ipv4.ip_forward", "1")
        write_sysctl("net.bridge.bridge-nf-call-iptables", "1")
        self.check_routes()
        return self

    def _record_sysctls(self) -> None:
        if self.state_file.exists():  # an earlier run was killed: its record holds the machine's values
            self.sysctls = dict(json.loads(self.state_file.read_text()))
            return
        self.sysctls = {n: v for n in SYSCTLS if (v := read_sysctl(n)) is not None}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(self.sysctls))

    def _make_link(self) -> None:
        if run("ip", "link", "add", LINK, "type", "dummy", check=False).returncode != 0:
            run("ip", "link", "add", LINK, "type", "ifb")  # kernels without dummy links (this VM's)
        run("ip", "addr", "add", f"{self.node_ip}/32", "dev", LINK)
        run("ip", "link", "set", LINK, "up")
        run("ip", "route", "add", self.service_range, "dev", LINK)

    def _make_bridge(self) -> None:
        # The CNI bridge plugin takes over a bridge that exists; made now, the pod range routes here
        # before the first pod (until then a lookup for it would use the default gateway).
        prefix = ipaddress.ip_network(self.pod_range).prefixlen
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        run("ip", "addr", "add", f"{self.pod_gateway}/{prefix}", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")

    def check_routes(self) -> None:
        """Refuse when a packet to the Service or pod range would leave the machine."""
        service_ip = str(next(ipaddress.ip_network(self.service_range).hosts()))
        pod_ip = str(list(ipaddress.ip_network(self.pod_range).hosts())[-1])
        for ip, dev in ((service_ip, LINK), (pod_ip, BRIDGE)):
            why = route_leaves_machine(ip_json("route", "get", ip), expected_dev=dev)
            if why:
                raise NodeUnavailable(f"refusing to start: traffic to {ip} would leave the machine ({why})")

    def down(self) -> None:
        while run("iptables", "-w", "5", "-D", *FORWARD_RULE, check=False).returncode == 0:
            pass
        for link in (BRIDGE, LINK):  # the link takes the Service range's route with it
            if link_exists(link):
                run("ip", "link", "del", link, check=False)
        for name, value in self.sysctls.items():
            if read_sysctl(name) not in (None, value):
                write_sysctl(name, value)
        self.state_file.unlink(missing_ok=True)

    def clear_leftovers(self) -> None:
        """What a killed earlier run left: the same links and rule, and its recorded kernel settings put back."""
        old = NetworkGuard(self.service_range, self.state_file, self.pod_range)
        if self.state_file.exists():
            old.sysctls = dict(json.loads(self.state_file.read_text()))
        old.down()
