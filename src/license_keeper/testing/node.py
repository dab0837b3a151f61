"""A real Kubernetes node beside the test control plane, so the keeper and gateways run as pods.

(Over 400 lines on purpose: ``Node`` is one lifecycle over the same directory, processes and network: the
container runtime, the control plane it serves, the node's four components, images, restarts and teardown.
Keeping traffic on the machine is ``netguard.py``.)

What runs, all as children of this process, with state under ``workdir``:

* containerd (Debian's package) with runc and the CNI bridge plugin, pods on ``POD_RANGE``;
* etcd and kube-apiserver (``ControlPlane``) on the node's own address, serving pods through the
  ``kubernetes`` Service with ServiceAccount tokens;
* kubelet, kube-proxy (nftables), kube-controller-manager and kube-scheduler, built from the Go module proxy
  by ``tools/controlplane/build.sh`` (component ``node``).

Images are built locally (podman) and imported into containerd, or pulled from a registry on this machine that
``trust_registry`` names (the release tests' ``testing.registry``, on the node's address): containerd reaches no
other registry. Needs root, cgroups and the Debian packages containerd, runc, containernetworking-plugins,
iptables, nftables, podman.

Usage from the shell::

    python -m license_keeper.testing.node start --workdir /tmp/node    # until Ctrl-C; then removes everything
    python -m license_keeper.testing.node clean --workdir /tmp/node    # what a killed run left behind
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .controlplane import (
    SERVICE_RANGE,
    ControlPlane,
    ControlPlaneError,
    _child_guard,
    _stop_process,
    binary,
    free_port,
    wait_for_signal,
)
from .netguard import BRIDGE, POD_RANGE, NetworkGuard, NodeUnavailable, run

__all__ = ["NODE_NAME", "Node", "NodeUnavailable", "build_pause_image", "node_prerequisites", "registry_hosts_toml"]

NODE_NAME = "lk-node"
PAUSE_IMAGE = "localhost/license-keeper-pause:1"
CACHE = Path(
    os.environ.get("LICENSE_KEEPER_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "license-keeper"
)
PODMAN = Path(__file__).resolve().parents[3] / "tools" / "image" / "podman.sh"
NEEDED_COMMANDS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "nft", "ip", "podman", "gcc")
PAUSE_C = r"""
#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>
static void down(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction d = {.sa_handler = down}, r = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGINT, &d, 0); sigaction(SIGTERM, &d, 0); sigaction(SIGCHLD, &r, 0);
  for (;;) pause();
}
"""


# --- what the machine must have ---------------------------------------------------------------------------


def node_prerequisites() -> list[str]:
    """Why this machine cannot run the node (empty when it can)."""
    why = []
    if os.geteuid() != 0:
        why.append("needs root (it runs containerd, the kubelet and changes routes)")
    if not Path("/sys/fs/cgroup/memory").is_dir() and not Path("/sys/fs/cgroup/cgroup.controllers").exists():
        why.append("no cgroups mounted at /sys/fs/cgroup")
    missing = [c for c in NEEDED_COMMANDS if shutil.which(c) is None]
    if missing:
        why.append(f"missing {', '.join(missing)} (apt-get install containerd runc containernetworking-plugins "
                   "iptables nftables podman gcc)")  # fmt: skip
    if not Path("/usr/lib/cni/bridge").exists():
        why.append("missing the CNI plugins in /usr/lib/cni (apt-get install containernetworking-plugins)")
    return why


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return run(str(PODMAN), *args, check=check, timeout=timeout)


def build_pause_image() -> str:
    """The pod sandbox's image: a static pause binary that reaps children, built here (no registry)."""
    if podman("image", "exists", PAUSE_IMAGE, check=False).returncode == 0:
        return PAUSE_IMAGE
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "pause.c").write_text(PAUSE_C)
        run("gcc", "-Os", "-static", "-o", f"{d}/pause", f"{d}/pause.c")
        (Path(d) / "Containerfile").write_text('FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n')
        podman("build", "--quiet", "--network=host", "-t", PAUSE_IMAGE, d)
    return PAUSE_IMAGE


# --- configuration files ----------------------------------------------------------------------------------


def containerd_config(workdir: Path) -> str:
    return f"""version = 2
root = "{workdir}/containerd/root"
state = "{workdir}/containerd/state"
[grpc]
  address = "{workdir}/containerd/containerd.sock"
[ttrpc]
  address = "{workdir}/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  enable_cdi = false
  # The VM withholds CAP_SYS_RESOURCE: an oom_score_adj below containerd's own fails every sandbox.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{shutil.which('runc') or 'runc'}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{workdir}/cni/net.d"
  # One hosts.toml per registry the node may pull from (Node.trust_registry): its address and CA.
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{registry_hosts_dir(workdir)}"
"""


def registry_hosts_dir(workdir: Path) -> Path:
    return workdir / "containerd" / "certs.d"


def registry_hosts_toml(address: str, ca_file: Path) -> str:
    """containerd's hosts.toml for a registry at ``address`` (host:port) served over TLS from ``ca_file``."""
    return f"""server = "https://{address}"

[host."https://{address}"]
  capabilities = ["pull", "resolve"]
  ca = "{ca_file}"
"""


def cni_config(workdir: Path) -> dict[str, Any]:
    # No ipMasq: nothing a pod sends is rewritten to leave by the node's address; no portmap: no hostPorts.
    bridge = {
        "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_RANGE}]], "routes": [{"dst": "0.0.0.0/0"}],
                 "dataDir": str(workdir / "cni" / "ipam")},
    }  # fmt: skip
    return {"cniVersion": "0.4.0", "name": "license-keeper", "plugins": [bridge]}


def kubelet_config(workdir: Path, node_ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,  # this kind of machine has cgroup v1 and no systemd
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{workdir}/containerd/containerd.sock",
        "failSwapOn": False,
        # The API server calls the kubelet (logs, exec) without a client certificate; it listens on the
        # node's address only, which nothing outside this machine reaches.
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "address": node_ip,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 0,
        "resolvConf": "/etc/resolv.conf",
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,  # imported images cannot be pulled again: never collect them
        "serializeImagePulls": False,
        "registerNode": True,
        "syncFrequency": "5s",  # Secret volumes follow within seconds
    }


def kube_proxy_config(admin_kubeconfig: Path, node_ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(admin_kubeconfig)},
        "mode": "nftables",  # its own table: the harness's iptables FORWARD drop stays in force
        "clusterCIDR": POD_RANGE,
        "hostnameOverride": NODE_NAME,
        "bindAddress": node_ip,
        "nodePortAddresses": [f"{node_ip}/32"],
        "metricsBindAddress": f"127.0.0.1:{free_port()}",
        "healthzBindAddress": f"127.0.0.1:{free_port()}",
        "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


# --- the node ---------------------------------------------------------------------------------------------


class Node:
    """containerd, a control plane and the node's components, all under ``workdir``; see the module's text.

    ``start()`` returns once the Node is Ready and the ``default`` ServiceAccount exists; ``stop()`` removes
    every process, container, mount, link, rule and route it made and puts back the kernel settings.
    """

    def __init__(self, workdir: Path | str) -> None:
        self.workdir = Path(workdir)
        self.guard = NetworkGuard(SERVICE_RANGE, state_file=CACHE / "node-network.json")
        self.controlplane: ControlPlane | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._netns_before: set[str] = set()
        self._lock: int | None = None
        self.timings: dict[str, float] = {}
        atexit.register(self.stop)

    # paths and addresses
    @property
    def node_ip(self) -> str:
        return self.guard.node_ip

    @property
    def cp(self) -> ControlPlane:
        if self.controlplane is None:
            raise ControlPlaneError("the node is not started")
        return self.controlplane

    @property
    def socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    def log(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    # lifecycle
    def start(self, timeout: float = 180.0) -> Node:
        why = node_prerequisites()
        if why:
            raise NodeUnavailable("cannot run a node here: " + "; ".join(why))
        started = time.monotonic()
        self._take_machine(wait=1800.0)
        self.clean()
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self._netns_before = set(os.listdir("/run/netns")) if Path("/run/netns").is_dir() else set()
        self.guard.up()
        self._mark("network guarded", started)
        self.start_containerd()
        self.import_images([build_pause_image()])
        self._mark("containerd up, pause image imported", started)
        self.controlplane = ControlPlane(self.workdir / "cp", node_ip=self.node_ip).start()
        self._mark("control plane ready", started)
        self._write_node_configs()
        self.start_kubelet()
        self._start_components()
        self.wait_node_ready(deadline=started + timeout)
        self._mark("node Ready", started)
        self._wait_default_service_account(deadline=started + timeout)
        self._mark("default ServiceAccount", started)
        return self

    def _take_machine(self, wait: float) -> None:
        """One node per machine (the links, bridge and routes have fixed names): wait for another to end."""
        CACHE.mkdir(parents=True, exist_ok=True)
        fd = os.open(CACHE / "node.lock", os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    held = CACHE / "node.lock"
                    raise NodeUnavailable(f"another node runs on this machine ({held} is held)") from None
                time.sleep(1)
        self._lock = fd

    def _release_machine(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing releases the flock
            self._lock = None

    def _mark(self, what: str, since: float) -> None:
        self.timings[what] = round(time.monotonic() - since, 2)

    def _write_node_configs(self) -> None:
        conf = self.workdir / "conf"
        conf.mkdir(exist_ok=True)
        (conf / "kubelet.json").write_text(json.dumps(kubelet_config(self.workdir, self.node_ip)))
        (conf / "kube-proxy.json").write_text(json.dumps(kube_proxy_config(self.cp.admin_kubeconfig, self.node_ip)))
        cni = self.workdir / "cni" / "net.d"
        cni.mkdir(parents=True, exist_ok=True)
        (cni / "10-license-keeper.conflist").write_text(json.dumps(cni_config(self.workdir)))

    def _spawn(self, name: str, argv: Sequence[str]) -> None:
        log = open(self.log(name), "ab")  # noqa: SIM115 - owned by the child
        self._procs[name] = subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, preexec_fn=_child_guard(), start_new_session=False
        )
        log.close()

    def start_containerd(self) -> None:
        config = self.workdir / "containerd" / "config.toml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(containerd_config(self.workdir))
        self._spawn("containerd", ["containerd", "--config", str(config)])
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            self._check_alive("containerd")
            if time.monotonic() > deadline:
                raise NodeUnavailable(f"containerd did not answer within 30 s; see {self.log('containerd')}")
            time.sleep(0.1)

    def start_kubelet(self) -> None:
        self._spawn("kubelet", [
            str(binary("node", "kubelet")), f"--config={self.workdir / 'conf' / 'kubelet.json'}",
            f"--kubeconfig={self.cp.admin_kubeconfig}", f"--root-dir={self.workdir / 'kubelet'}",
            f"--cert-dir={self.workdir / 'kubelet' / 'pki'}", f"--node-ip={self.node_ip}",
            f"--hostname-override={NODE_NAME}", "--v=1",
        ])  # fmt: skip

    def _start_components(self) -> None:
        admin = str(self.cp.admin_kubeconfig)
        pki = self.cp.workdir / "pki"
        self._spawn("kube-proxy", [str(binary("node", "kube-proxy")),
                                   f"--config={self.workdir / 'conf' / 'kube-proxy.json'}", "--v=1"])  # fmt: skip
        self._spawn("kube-controller-manager", [
            str(binary("node", "kube-controller-manager")), f"--kubeconfig={admin}", "--leader-elect=false",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.pem'}",
            "--use-service-account-credentials=false", f"--service-cluster-ip-range={SERVICE_RANGE}",
            "--allocate-node-cidrs=false", "--bind-address=127.0.0.1", "--secure-port=0", "--v=1",
            # a drained or restarted node's pods are evicted by the tests, not after minutes of NotReady
            "--node-monitor-grace-period=20s",
        ])  # fmt: skip
        self._spawn("kube-scheduler", [str(binary("node", "kube-scheduler")), f"--kubeconfig={admin}",
                                       "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0",
                                       "--v=1"])  # fmt: skip

    def _check_alive(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is not None:
            tail = self.log(name).read_text(errors="replace").strip().splitlines()[-3:]
            raise NodeUnavailable(f"{name} exited with {proc.returncode}: {' | '.join(tail)}")

    def wait_node_ready(self, deadline: float) -> None:
        while not self.node_ready():
            for name in ("kubelet", "kube-proxy", "kube-controller-manager", "kube-scheduler"):
                self._check_alive(name)
            if time.monotonic() > deadline:
                raise NodeUnavailable(f"node {NODE_NAME} not Ready in time; see {self.log('kubelet')}")
            time.sleep(0.25)

    def node_ready(self) -> bool:
        resp = self.cp.request("GET", f"/api/v1/nodes/{NODE_NAME}")
        conditions = resp.body.get("status", {}).get("conditions", []) if resp.status == 200 else []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def _wait_default_service_account(self, deadline: float) -> None:
        while self.cp.request("GET", "/api/v1/namespaces/default/serviceaccounts/default").status != 200:
            if time.monotonic() > deadline:
                raise NodeUnavailable("kube-controller-manager made no default ServiceAccount in time")
            time.sleep(0.2)

    # containerd and images
    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run("ctr", "-a", str(self.socket), "-n", "k8s.io", *args, check=check, timeout=timeout)

    def trust_registry(self, address: str, ca_file: Path) -> None:
        """Let containerd pull from the registry at ``address`` (host:port), its TLS verified against ``ca_file``
        alone (copied here); containerd reads the file at each pull, so this works while it runs."""
        directory = registry_hosts_dir(self.workdir) / address
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copy(ca_file, directory / "ca.pem")
        (directory / "hosts.toml").write_text(registry_hosts_toml(address, directory / "ca.pem"))

    def import_images(self, names: Sequence[str]) -> None:
        """Copy locally built images (podman's store) into the node's containerd."""
        with tempfile.TemporaryDirectory(dir=self.workdir) as d:
            for i, name in enumerate(names):
                tar = f"{d}/{i}.tar"
                podman("save", "--quiet", "--format=docker-archive", "-o", tar, name)
                self.ctr("images", "import", tar)

    # restarts
    def stop_runtime(self) -> None:
        """The node going down hard: kubelet and containerd stopped, every container killed."""
        _stop_process(self._procs.pop("kubelet", None), timeout=10)
        self._kill_containers()
        _stop_process(self._procs.pop("containerd", None), timeout=10)

    def start_runtime(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        self.start_containerd()
        self.start_kubelet()
        self.wait_node_ready(deadline)

    def _kill_containers(self) -> None:
        # Killing a shim leaves its container running, re-parented: kill every process in the pods'
        # cgroups first, then the shims of this containerd.
        pods = Path("/sys/fs/cgroup/memory/kubepods")
        for procs in pods.rglob("cgroup.procs") if pods.is_dir() else ():
            for listed in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(listed), signal.SIGKILL)
        for pid in self._shim_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _shim_pids(self) -> list[int]:
        mine = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(self.socket).encode() in argv:
                    mine.append(int(proc.name))
        return mine

    # teardown
    def stop(self) -> None:
        if self.controlplane is not None and self.cp.apiserver_running and "kubelet" in self._procs:
            self._delete_workloads()
        for name in ("kube-scheduler", "kube-controller-manager", "kube-proxy", "kubelet"):
            _stop_process(self._procs.pop(name, None), timeout=10)
        if self.controlplane is not None:
            self.controlplane.stop()
            self.controlplane = None
        self._kill_containers()
        _stop_process(self._procs.pop("containerd", None), timeout=10)
        if self._lock is not None:  # never clean up after a node this process does not own
            self.clean()
        self._release_machine()

    def _delete_workloads(self) -> None:
        """Pods deleted through the API first, so the kubelet tears their networks down as it should."""
        for path in ("/apis/apps/v1/deployments", "/apis/apps/v1/statefulsets", "/apis/apps/v1/daemonsets"):
            for item in self.cp.request("GET", path).body.get("items", []):
                meta = item["metadata"]
                self.cp.request("DELETE", f"/apis/apps/v1/namespaces/{meta['namespace']}/{path.rsplit('/', 1)[1]}/"
                                          f"{meta['name']}")  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pods = self.cp.request("GET", "/api/v1/pods").body.get("items", [])
            if not pods:
                return
            for pod in pods:
                meta = pod["metadata"]
                if not meta.get("deletionTimestamp"):
                    self.cp.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}")
            time.sleep(0.5)

    def clean(self) -> None:
        """Remove what this harness makes, whether this run or a killed one made it (idempotent)."""
        for pid in self._shim_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if (self.workdir / "conf" / "kube-proxy.json").exists() and self._have_node_binaries():
            run(str(binary("node", "kube-proxy")), "--cleanup", "--v=0", check=False)
        self._unmount_under(self.workdir)
        self._remove_netns()
        remove_kube_chains()
        self.guard.down()
        for state in ("containerd", "kubelet"):
            shutil.rmtree(self.workdir / state, ignore_errors=True)

    @staticmethod
    def _have_node_binaries() -> bool:
        try:
            binary("node", "kube-proxy")
        except ControlPlaneError:
            return False
        return True

    @staticmethod
    def _unmount_under(root: Path) -> None:
        prefix = str(root.resolve())
        for _ in range(3):
            points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
            mine = sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), key=len, reverse=True)
            if not mine:
                return
            for point in mine:
                run("umount", "-l", point, check=False)

    def _remove_netns(self) -> None:
        netns = Path("/run/netns")
        if not netns.is_dir():
            return
        for name in set(os.listdir(netns)) - self._netns_before:
            if name.startswith("cni-"):  # containerd's pod sandboxes; never another tool's
                run("umount", "-l", str(netns / name), check=False)
                with contextlib.suppress(OSError):
                    (netns / name).unlink()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def remove_kube_chains() -> None:
    """The kubelet's iptables chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...) and any CNI- chain, with the rules
    that jump to them, in iptables and ip6tables; the node's components do not remove them themselves."""
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            saved = run(f"{tool}-save", "-t", table, check=False).stdout.splitlines()
            chains = [line[1:].split()[0] for line in saved if line.startswith(":") and _ours(line[1:].split()[0])]
            for line in saved:
                jumps = line.startswith("-A ") and any(f"-j {c}" in line for c in chains)
                if jumps and not _ours(line.split()[1]):  # the rules in our chains go with them
                    run(tool, "-w", "5", "-t", table, "-D", *line[3:].split(), check=False)
            for chain in chains:
                run(tool, "-w", "5", "-t", table, "-F", chain, check=False)
            for chain in chains:
                run(tool, "-w", "5", "-t", table, "-X", chain, check=False)


def _ours(chain: str) -> bool:
    return chain.startswith(("KUBE-", "CNI-"))


# --- command line -----------------------------------------------------------------------------------------


def _main(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m license_keeper.testing.node",
        description="Run a real Kubernetes node beside the local control plane (containerd, kubelet, "
        "kube-proxy, kube-controller-manager, kube-scheduler), its traffic kept on this machine.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start", help="start everything in the foreground until interrupted, then remove it all")
    s.add_argument("--workdir", required=True, type=Path, help="directory for state, certificates and logs")
    s.add_argument("--image", action="append", default=[], help="a local (podman) image to import; repeatable")
    c = sub.add_parser("clean", help="remove what a killed run left: processes, mounts, links, rules, routes")
    c.add_argument("--workdir", required=True, type=Path)
    args = parser.parse_args(argv)

    node = Node(args.workdir)
    if args.command == "clean":
        try:
            node._take_machine(wait=2.0)
        except NodeUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        node.clean()
        node._release_machine()
        print("cleaned", flush=True)
        return 0
    try:
        node.start()
        if args.image:
            node.import_images(args.image)
    except (NodeUnavailable, ControlPlaneError) as e:
        node.stop()
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"node {NODE_NAME} Ready at {node.node_ip}: "
        + ", ".join(f"{k} {v} s" for k, v in node.timings.items())
        + f"\n  export KUBECONFIG={node.cp.admin_kubeconfig}\n"
        f"  kubectl: {binary('kubernetes', 'kubectl')}\n"
        "Ctrl-C stops it and removes everything it made.",
        flush=True,
    )
    try:
        wait_for_signal()
    finally:
        node.stop()
        print("node stopped and removed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
