"""TLSMaterial: server certificates for extra hosts; importable without trustme."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from license_keeper.testing.tls import TLSMaterial

HOST = "127.0.0.2"


def test_default_certificate_covers_loopback_only(tls_material: TLSMaterial) -> None:
    assert tls_material.server_hosts() == ["127.0.0.1", "localhost"]


def test_extra_hosts_are_added_once(tmp_path: Path) -> None:
    tls = TLSMaterial.create(tmp_path, hosts=[HOST, "gateway.test", "127.0.0.1"])
    assert tls.server_hosts() == ["127.0.0.1", HOST, "localhost", "gateway.test"]


def test_tls_module_imports_without_trustme() -> None:
    # The runtime image has no trustme or cryptography: importing TLSMaterial must not need them.
    code = (
        "import sys\n"
        "for name in ('trustme', 'cryptography'):\n"
        "    sys.modules[name] = None\n"
        "from license_keeper.testing.tls import TLSMaterial\n"
        "print(TLSMaterial.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "TLSMaterial"
