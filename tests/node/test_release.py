"""Install as users do: from a registry, the signatures verified first, the pods running the signed digest.

The session's release (``released`` in conftest.py: `make release`'s tools/release/release.py against a real
registry on the node's address) is what is checked here, as a user would check a public one: cosign verifies
the chart's signature by its version tag, the image the chart pins and its SBOM attestation, all against the
public key alone; then `helm install oci://<registry>/charts/license-keeper --version <version>` installs it
onto the node, whose containerd pulls the keeper from that registry (nothing imported), and every keeper pod
runs the very digest that was verified.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from license_keeper.testing.konnect import KonnectStandIn
from license_keeper.testing.pods import RELEASE, Cluster, keeper_pods, keeper_values, konnect_secrets, pod_ready

from .conftest import FIGURES, Released, cosign_tool

# A Sigstore trusted root that trusts no public service: the public key alone decides (and cosign stays offline).
KEY_ONLY_TRUSTED_ROOT = {"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1"}


def cosign_verify(r: Released, *args: str, public_key: Path | None = None, check: bool = True) -> Any:
    trusted_root = r.sbom.parent / "key-only-trusted-root.json"
    trusted_root.write_text(json.dumps(KEY_ONLY_TRUSTED_ROOT))
    done = subprocess.run(
        [cosign_tool(), args[0], f"--key={public_key or r.public_key}", "--insecure-ignore-tlog=true",
         f"--trusted-root={trusted_root}", f"--registry-cacert={r.registry.ca_file}", *args[1:]],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "TUF" not in done.stderr, f"cosign reached for Sigstore's public TUF repository: {done.stderr}"
    if not check:
        return done
    assert done.returncode == 0, f"cosign {' '.join(args)} did not verify: {done.stderr.strip()}"
    # `verify` prints a JSON array, `verify-attestation` one JSON object a line
    found = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return [x for item in found for x in (item if isinstance(item, list) else [item])]


def lock_names() -> set[str]:
    lock = Path(__file__).resolve().parents[2] / "requirements.lock"
    return {
        line.split("==")[0].lower().replace("_", "-")
        for line in lock.read_text().splitlines()
        if line and not line[0].isspace() and not line.startswith("#") and "==" in line
    }


def verify_as_a_user(r: Released, cluster: Cluster, tmp_path: Path) -> tuple[str, str]:
    """What a user checks before installing; the chart's digest and the image (by digest) it pins."""
    chart_ref = r.chart.removeprefix("oci://")
    ca = f"--ca-file={r.registry.ca_file}"

    # The chart's signature, by the version tag a user names.
    (chart_sig,) = cosign_verify(r, "verify", f"{chart_ref}:{r.version}")
    chart_digest = chart_sig["critical"]["image"]["docker-manifest-digest"]
    assert chart_digest == r.chart_digest == r.registry.manifest_digest("charts/license-keeper", r.version)
    assert chart_sig["critical"]["identity"]["docker-reference"] == chart_ref

    # The image the chart pins, and its signature and SBOM.
    shown = cluster.helm("show", "values", r.chart, "--version", r.version, ca)
    pinned = {m.group(1): m.group(2) for m in re.finditer(r'^  (registry|digest): "?([^"\n]*)"?$', shown, re.M)}
    assert pinned == {"registry": r.registry.address, "digest": r.image_digest}, shown
    image_digest = pinned["digest"]
    image = f"{r.registry.address}/license-keeper@{image_digest}"
    assert image == r.image
    (image_sig,) = cosign_verify(r, "verify", image)
    assert image_sig["critical"]["image"]["docker-manifest-digest"] == image_digest
    (attestation,) = cosign_verify(r, "verify-attestation", "--type=cyclonedx", image)
    statement = json.loads(base64.b64decode(attestation["payload"]))
    assert statement["predicateType"] == "https://cyclonedx.org/bom"
    assert statement["subject"][0]["digest"] == {"sha256": image_digest.split(":")[1]}
    bom = statement["predicate"]
    assert bom["metadata"]["component"]["version"] == r.version
    assert {c["name"].lower().replace("_", "-") for c in bom["components"]} == lock_names()

    # Another key verifies nothing: the check is real.
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run([cosign_tool(), "generate-key-pair"], cwd=other, env={"COSIGN_PASSWORD": "x"}, check=True,
                   capture_output=True)  # fmt: skip
    refused = cosign_verify(r, "verify", f"{chart_ref}:{r.version}", public_key=other / "cosign.pub", check=False)
    assert refused.returncode != 0 and "no matching signatures" in refused.stderr
    return chart_digest, image


async def test_install_the_signed_release_from_the_registry(
    released: Released, cluster: Cluster, konnect: KonnectStandIn, tmp_path: Path
) -> None:
    r = released
    ca = f"--ca-file={r.registry.ca_file}"

    # 1. Before installing: the signatures of the chart (by the version tag a user names), of the image it pins
    # and of that image's SBOM.
    chart_digest, image = await asyncio.to_thread(verify_as_a_user, r, cluster, tmp_path)

    # 2. helm install from the registry, the release's own image values (no image set here).
    await asyncio.to_thread(konnect_secrets, cluster, konnect)
    values = keeper_values(konnect, image={}, delivery={"restart": {"deployments": []}})
    path = tmp_path / "values.json"
    path.write_text(json.dumps(values))
    started = time.monotonic()
    out = await asyncio.to_thread(
        cluster.helm, "install", RELEASE, r.chart, "--version", r.version, ca, "-f", str(path), "--wait",
        "--timeout=180s", timeout=240,
    )  # fmt: skip
    FIGURES["helm install oci:// (chart pulled, keeper image pulled by digest) to Ready"] = round(
        time.monotonic() - started, 2
    )
    assert f"Digest: {chart_digest}" in out, out  # helm installed the chart whose signature was verified

    # 3. Every keeper pod runs the signed digest, pulled from the registry.
    pods = await asyncio.to_thread(keeper_pods, cluster)
    assert len(pods) == 2 and all(pod_ready(p) for p in pods)
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        (status,) = pod["status"]["containerStatuses"]
        assert container["image"] == image
        assert status["imageID"] == image, status
    listed = (await asyncio.to_thread(cluster.node.ctr, "images", "ls", "-q")).stdout.split()
    assert image in listed, listed
    assert not [name for name in listed if name.startswith("localhost/license-keeper:")], listed  # never imported
    release = json.loads(await asyncio.to_thread(cluster.helm, "list", "-o", "json"))
    assert [(x["chart"], x["app_version"]) for x in release] == [(f"license-keeper-{r.version}", r.version)]
