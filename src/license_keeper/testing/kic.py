"""A test-side stand-in for Kong Ingress Controller's KongLicense controller, and a minimal KongLicense CRD.

No KIC runs in the tests: ``KongLicenseController.reconcile()`` does what KIC's KongLicense controller does
(REFERENCE §7) on the real API server: among *enabled* KongLicenses pick the newest creationTimestamp (a tie
goes to the smaller name), set ``status.controllers[].conditions`` ``Programmed`` (True ``PickedAsLatest`` on
the chosen one, False ``ReplacedByNewer`` on the others) through the status subresource, and "push" the
chosen license to its gateways (``pushed``). Its rule is written here independently of the keeper's
``delivery.konglicense_winner``, so a wrong rule in the keeper shows up as a failing test.

Synchronous (urllib through ``ControlPlane.must``): call it from tests with ``asyncio.to_thread``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from license_keeper.testing.controlplane import ControlPlane, ControlPlaneError

__all__ = ["KONGLICENSE_CRD", "KongLicenseController", "install_konglicense_crd"]

GROUP = "configuration.konghq.com"
KONGLICENSES = f"/apis/{GROUP}/v1alpha1/konglicenses"

_CONDITION = {
    "type": "object",
    "required": ["type", "status"],
    "properties": {
        "type": {"type": "string"},
        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "reason": {"type": "string"},
        "message": {"type": "string"},
        "observedGeneration": {"type": "integer"},
        "lastTransitionTime": {"type": "string", "format": "date-time"},
    },
}

KONGLICENSE_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"konglicenses.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Cluster",
        "names": {
            "kind": "KongLicense",
            "listKind": "KongLicenseList",
            "plural": "konglicenses",
            "singular": "konglicense",
            "shortNames": ["kl"],
            "categories": ["kong-ingress-controller"],
        },
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "required": ["rawLicenseString"],
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "metadata": {"type": "object"},
                            "enabled": {"type": "boolean", "default": True},
                            "rawLicenseString": {"type": "string"},
                            "status": {
                                "type": "object",
                                "properties": {
                                    "controllers": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["controllerName"],
                                            "properties": {
                                                "controllerName": {"type": "string"},
                                                "controllerRef": {
                                                    "type": "object",
                                                    "properties": {
                                                        "group": {"type": "string"},
                                                        "kind": {"type": "string"},
                                                        "namespace": {"type": "string"},
                                                        "name": {"type": "string"},
                                                    },
                                                },
                                                "conditions": {"type": "array", "items": _CONDITION},
                                            },
                                        },
                                    }
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}


def install_konglicense_crd(cp: ControlPlane, timeout: float = 30.0) -> None:
    """Create the CRD (once per control plane) and wait until the API serves KongLicenses."""
    resp = cp.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", KONGLICENSE_CRD)
    if resp.status not in (201, 409):
        raise ControlPlaneError(f"create KongLicense CRD: HTTP {resp.status}: {resp.body.get('message')}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cp.request("GET", KONGLICENSES).status == 200:
            return
        time.sleep(0.2)
    raise ControlPlaneError("KongLicense CRD not served in time")


class KongLicenseController:
    def __init__(self, cp: ControlPlane, controller_name: str = "konghq.com/kong-ingress-controller-test") -> None:
        self.cp = cp
        self.controller_name = controller_name
        self.pushed: str | None = None  # the license its gateways run
        self.chosen: str | None = None

    def reconcile(self) -> str | None:
        items = self.cp.must("GET", KONGLICENSES).get("items") or []
        enabled = [o for o in items if o.get("enabled", True)]
        # newest creationTimestamp first; among equals, names ascending
        enabled.sort(key=lambda o: o["metadata"]["name"])
        enabled.sort(key=lambda o: _parse_time(o["metadata"]["creationTimestamp"]), reverse=True)
        chosen = enabled[0] if enabled else None
        self.chosen = chosen["metadata"]["name"] if chosen else None
        self.pushed = chosen["rawLicenseString"] if chosen else None
        for obj in enabled:
            picked = obj is chosen
            self._set_programmed(obj, picked)
        return self.chosen

    def _set_programmed(self, obj: dict[str, Any], picked: bool) -> None:
        meta = obj["metadata"]
        condition = {
            "type": "Programmed",
            "status": "True" if picked else "False",
            "reason": "PickedAsLatest" if picked else "ReplacedByNewer",
            "message": "" if picked else "a newer KongLicense is used",
            "observedGeneration": meta.get("generation", 1),
            "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        others = [
            c
            for c in (obj.get("status") or {}).get("controllers") or []
            if c.get("controllerName") != self.controller_name
        ]
        status = {"controllers": [*others, {"controllerName": self.controller_name, "conditions": [condition]}]}
        body = {**obj, "status": status}
        self.cp.must("PUT", f"{KONGLICENSES}/{meta['name']}/status", body)


def _parse_time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
