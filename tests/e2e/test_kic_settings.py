"""Issue 21 item 2: a keeper dropped next to an existing KIC configuration runs from KIC's settings alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lightkube import AsyncClient

from license_keeper.testing.controlplane import ServiceAccountAccess
from license_keeper.testing.keeper import KeeperProcess, KonnectEndpoint
from license_keeper.testing.konnect import KonnectStandIn

from .conftest import leaks, read_secret, ready, wait_for, writes


@dataclass
class KicConfiguredKeeper(KeeperProcess):
    """`license-keeper run` with no Konnect flag at all: only KIC's CONTROLLER_KONNECT_* environment."""

    def command(self) -> list[str]:
        return [
            self.python,
            "-m",
            "license_keeper",
            "run",
            f"--kubeconfig={self.kubeconfig}",
            f"--namespace={self.namespace}",
            # KIC has no setting for a private Konnect CA; the stand-in's is the keeper's own option
            f"--konnect-ca-file={self.konnect.ca_file}",
            f"--probe-addr=127.0.0.1:{self.probe_port}",
            f"--metrics-addr=127.0.0.1:{self.metrics_port}",
            "--log-format=json",
            *self.args,
        ]


def kic_environment(konnect: KonnectStandIn) -> dict[str, str]:
    """As KIC's Konnect manifests and the Kong chart set them: the certificate and key inline (from the
    Secret konnect-client-tls), the deprecated runtime group id as Kong's operator docs still show it,
    KIC's switches and Go durations, and the settings of KIC's configuration sync."""
    return {
        "CONTROLLER_KONNECT_ADDRESS": konnect.address,
        "CONTROLLER_KONNECT_RUNTIME_GROUP_ID": konnect.control_plane_id,
        "CONTROLLER_KONNECT_TLS_CLIENT_CERT": konnect.tls.client_cert_file.read_text(),
        "CONTROLLER_KONNECT_TLS_CLIENT_KEY": konnect.tls.client_key_file.read_text(),
        "CONTROLLER_KONNECT_SYNC_ENABLED": "true",
        "CONTROLLER_KONNECT_LICENSING_ENABLED": "true",
        "CONTROLLER_KONNECT_LICENSE_STORAGE_ENABLED": "true",
        "CONTROLLER_KONNECT_INITIAL_LICENSE_POLLING_PERIOD": "1m0s",
        "CONTROLLER_KONNECT_LICENSE_POLLING_PERIOD": "12h0m0s",
        "CONTROLLER_KONNECT_UPLOAD_CONFIG_PERIOD": "30s",
        "CONTROLLER_KONNECT_CONFIG_SYNC_CONCURRENCY": "4",
        "CONTROLLER_KONNECT_REFRESH_NODE_PERIOD": "1m0s",
        "CONTROLLER_KONNECT_DISABLE_CONSUMERS_SYNC": "false",
    }


async def test_a_keeper_runs_from_kics_konnect_configuration(
    konnect: KonnectStandIn,
    keeper_access: ServiceAccountAccess,
    admin_api: AsyncClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    env = kic_environment(konnect)
    k = KicConfiguredKeeper(
        kubeconfig=keeper_access.kubeconfig,
        namespace=namespace,
        konnect=KonnectEndpoint.of(konnect),
        workdir=tmp_path / "keepers",
        env=env,
    ).start()
    try:
        await ready(k, timeout=30)
        assert konnect.record is not None
        await wait_for(lambda: _holds(admin_api, namespace, konnect.record.document), 20)
        assert await writes(k) == 1
        assert konnect.client_serials  # it presented the inline certificate
        logs = k.logs()
        # what it does not use of KIC's settings is named once at start, never the key
        assert "CONTROLLER_KONNECT_SYNC_ENABLED" in logs
        assert "PRIVATE KEY" not in logs and env["CONTROLLER_KONNECT_TLS_CLIENT_KEY"][40:80] not in logs
        assert not leaks(logs)
    finally:
        k.kill()


async def _holds(api: AsyncClient, namespace: str, document: str) -> bool:
    import base64

    secret = await read_secret(api, namespace)
    return bool(secret and secret.data and base64.b64decode(secret.data.get("license", "")).decode() == document)
