"""Gateway workloads for the restart target's tests, and the status their controller would write.

No kube-controller-manager runs in the tests: nothing creates ReplicaSets or pods and nothing writes a
Deployment's status. ``advance_rollout`` writes that status through the status subresource, as the
Deployment controller reports the pods it runs: how many run the current pod template (and how many of
those are available) and how many of an older template are still running.

Synchronous (urllib through ``ControlPlane.must``).
"""

from __future__ import annotations

from typing import Any

from license_keeper.testing.controlplane import ControlPlane

__all__ = ["advance_rollout", "gateway_deployment"]


def gateway_deployment(
    name: str, *, replicas: int = 2, paused: bool = False, license_from: str | None = None
) -> dict[str, Any]:
    """A gateway Deployment; ``license_from``: its pods read KONG_LICENSE_DATA from that Secret's key
    ``license``, as the Kong chart wires them (``enterprise.license_secret``)."""
    labels = {"app": name}
    container: dict[str, Any] = {"name": "kong", "image": "kong/kong-gateway:3.10"}
    if license_from is not None:
        ref = {"secretKeyRef": {"name": license_from, "key": "license"}}
        container["env"] = [
            {"name": "KONG_ROLE", "value": "traditional"},
            {"name": "KONG_LICENSE_DATA", "valueFrom": ref},
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "paused": paused,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def advance_rollout(cp: ControlPlane, path: str, *, updated: int, old: int = 0, available: int | None = None) -> None:
    """What the Deployment controller would write for the workload at ``path``: the generation seen, ``updated``
    pods on the current template (``available`` of them available, default all) and ``old`` pods of an older
    one still running (counted available, as they were before the rollout)."""
    obj = cp.must("GET", path)
    available = updated if available is None else available
    obj["status"] = {
        "observedGeneration": obj["metadata"]["generation"],
        "replicas": updated + old,
        "updatedReplicas": updated,
        "readyReplicas": available + old,
        "availableReplicas": available + old,
    }
    cp.must("PUT", f"{path}/status", obj)
