"""Test certificate material (a CA, a server certificate for 127.0.0.1/localhost and any extra hosts, a
client certificate), made with trustme and written to a directory, for TLS tests against the stand-ins.

Files: ca.pem, server.pem, server-key.pem, client.pem, client-key.pem. Never use these outside tests.
trustme (and cryptography) are imported only by the functions that make or inspect certificates, so a
module that merely imports ``TLSMaterial`` also runs where only the runtime dependencies are installed.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trustme

__all__ = ["TLSMaterial"]

CA_FILE = "ca.pem"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server-key.pem"
CLIENT_CERT_FILE = "client.pem"
CLIENT_KEY_FILE = "client-key.pem"
_ALL_FILES = (CA_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE)
# Every server certificate covers these; ``hosts`` adds to them.
DEFAULT_HOSTS = ("127.0.0.1", "localhost")


def _new_ca(organization_name: str) -> trustme.CA:
    import trustme  # lazy: only tests that make certificates need it

    return trustme.CA(organization_name=organization_name)


def server_hosts(hosts: Iterable[str] = ()) -> list[str]:
    """The names a server certificate is issued for: the defaults, then ``hosts``, each once."""
    return list(dict.fromkeys([*DEFAULT_HOSTS, *hosts]))


def _write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    # Write next to the target and rename, so a reader never sees a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class TLSMaterial:
    directory: Path
    ca_file: Path
    server_cert_file: Path
    server_key_file: Path
    client_cert_file: Path
    client_key_file: Path
    # The CA object is only present when the material was created in this process (needed to issue
    # more trusted client certificates). Material loaded from disk can only rotate to untrusted certs.
    _ca: trustme.CA | None = field(default=None, repr=False)

    @classmethod
    def _paths(cls, directory: Path, ca: trustme.CA | None) -> TLSMaterial:
        d = Path(directory)
        return cls(
            directory=d,
            ca_file=d / CA_FILE,
            server_cert_file=d / SERVER_CERT_FILE,
            server_key_file=d / SERVER_KEY_FILE,
            client_cert_file=d / CLIENT_CERT_FILE,
            client_key_file=d / CLIENT_KEY_FILE,
            _ca=ca,
        )

    @classmethod
    def create(cls, directory: Path, hosts: Iterable[str] = ()) -> TLSMaterial:
        """Make a fresh CA, server and client certificate and write them into ``directory``.

        The server certificate covers 127.0.0.1, localhost and ``hosts`` (IP addresses or DNS names).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ca = _new_ca("license-keeper test CA")
        material = cls._paths(directory, ca)
        _write_atomic(material.ca_file, ca.cert_pem.bytes(), 0o644)
        server = ca.issue_cert(*server_hosts(hosts), common_name="konnect-stand-in")
        _write_atomic(material.server_cert_file, b"".join(p.bytes() for p in server.cert_chain_pems), 0o644)
        _write_atomic(material.server_key_file, server.private_key_pem.bytes())
        material.rotate_client()
        return material

    @classmethod
    def load(cls, directory: Path) -> TLSMaterial:
        """Use material already written by ``create`` (for example by another process)."""
        material = cls._paths(Path(directory), None)
        missing = [name for name in _ALL_FILES if not (material.directory / name).is_file()]
        if missing:
            raise FileNotFoundError(f"TLS material in {directory} lacks {', '.join(missing)}")
        return material

    @classmethod
    def load_or_create(cls, directory: Path, hosts: Iterable[str] = ()) -> TLSMaterial:
        """The material in ``directory``; made there (for ``hosts`` too) when it is not complete."""
        directory = Path(directory)
        if all((directory / name).is_file() for name in _ALL_FILES):
            return cls.load(directory)
        return cls.create(directory, hosts)

    @classmethod
    def given(
        cls, tls: TLSMaterial | None, tls_dir: Path | None, owner: str, host: str = DEFAULT_HOSTS[0]
    ) -> TLSMaterial:
        """A stand-in's material: ``tls`` when passed, else what is (or is made) in ``tls_dir``.

        For a ``host`` other than 127.0.0.1, its server certificate must cover that host: material
        made here does; passed or loaded material that does not is refused (a client verifying the
        name would fail later, with a less useful error).
        """
        if tls is None:
            if tls_dir is None:
                raise TypeError(f"{owner} needs tls_dir or tls")
            tls = cls.load_or_create(Path(tls_dir), [host])
        if host not in DEFAULT_HOSTS and host not in tls.server_hosts():
            raise ValueError(f"{owner}: the server certificate in {tls.directory} does not cover {host}")
        return tls

    def server_hosts(self) -> list[str]:
        """The IP addresses and DNS names the server certificate covers (its subjectAltName)."""
        from cryptography import x509  # lazy, as trustme: only tests inspect certificates

        cert = x509.load_pem_x509_certificate(self.server_cert_file.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
        return ips + names.get_values_for_type(x509.DNSName)

    def rotate_client(self, *, trusted: bool = True, common_name: str = "license-keeper-client") -> None:
        """Write a fresh client certificate and key over client.pem / client-key.pem.

        ``trusted=False`` issues it from a new, unrelated CA, so the stand-in rejects it.
        """
        if trusted:
            if self._ca is None:
                raise RuntimeError("this TLS material was loaded from disk; only untrusted rotation is possible")
            ca = self._ca
        else:
            ca = _new_ca("untrusted test CA")
        leaf = ca.issue_cert("license-keeper-client.test", common_name=common_name)
        # key first: a reader that sees the new certificate then also sees the new key
        _write_atomic(self.client_key_file, leaf.private_key_pem.bytes())
        _write_atomic(self.client_cert_file, b"".join(p.bytes() for p in leaf.cert_chain_pems), 0o644)

    def server_ssl_context(self) -> ssl.SSLContext:
        """Server side: serve server.pem, require a client certificate issued by ca.pem."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.server_cert_file, self.server_key_file)
        ctx.load_verify_locations(cafile=self.ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def paths(self) -> dict[str, str]:
        return {
            "ca_file": str(self.ca_file),
            "server_cert_file": str(self.server_cert_file),
            "server_key_file": str(self.server_key_file),
            "client_cert_file": str(self.client_cert_file),
            "client_key_file": str(self.client_key_file),
        }
