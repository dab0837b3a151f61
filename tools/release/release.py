#!/usr/bin/env python3
"""Release the image and the chart to an OCI registry, signed, with an SBOM: what `make release` runs.

    make release REGISTRY=registry.example.com/kong [VERSION=0.1.0] [REGISTRY_CA=ca.pem] [COSIGN_KEY=cosign.key]

Steps, each stopping the release when it fails:

1. The version: ``__version__`` in src/license_keeper/__init__.py is the one place it is set; ``VERSION``, when
   given, must equal it, and so must Chart.yaml's ``version`` and ``appVersion``.
2. The image, built as `make image` builds it (tools/image/build.sh), pushed with podman to
   ``<REGISTRY>/license-keeper:<version>``; the registry's digest of what it stored is kept.
3. The SBOM: CycloneDX JSON made by cyclonedx-py from requirements.lock, the exact pins the image installs.
4. The chart, packaged with ``version``/``appVersion`` = the version and, in its values, the image by
   registry, repository and that digest, pushed with ``helm push`` to ``oci://<REGISTRY>/charts``.
5. cosign signs the image digest and the chart digest, and attests the SBOM to the image (predicate type
   cyclonedx), with the key pair ``COSIGN_KEY`` (a file, or any key reference cosign takes) and
   ``COSIGN_PASSWORD``. No transparency log: ``--tlog-upload=false``.
6. cosign verifies all three with the public key (``COSIGN_PUBLIC_KEY``, default the key's ``.pub``
   beside it), as a user would before installing; then dist/release-<version>.json records what was released.

The registry's TLS: the system's trust unless ``REGISTRY_CA`` names a CA file, which is handed to each tool
alone (podman ``--cert-dir``, helm ``--ca-file``, cosign ``--registry-cacert``). Credentials: each tool's
own login (``podman login``, ``helm registry login``, ``cosign login``), or ``REGISTRY_AUTH_FILE``, one
Docker-style config.json given to all three.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "license-keeper"
IMAGE_NAME = "license-keeper"
CHART_NAME = "license-keeper"
CHART_PATH = "charts"  # the chart is at oci://<registry>/charts/license-keeper
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# A Sigstore trusted root that trusts no public Sigstore service (no Fulcio CA, Rekor log, CT log or
# timestamp authority): verifying against the public key alone. Given to `cosign verify*` as --trusted-root,
# it also keeps cosign from fetching the public trusted root from Sigstore's TUF repository.
KEY_ONLY_TRUSTED_ROOT = {"mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1"}


class ReleaseError(RuntimeError):
    """A step of the release failed; the message says which and why."""


# --- the version: one place -------------------------------------------------------------------------------


def project_version(repo: Path = REPO) -> str:
    text = (repo / "src" / "license_keeper" / "__init__.py").read_text()
    m = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    if not m:
        raise ReleaseError("no __version__ in src/license_keeper/__init__.py")
    return m.group(1)


def chart_versions(chart: Path = CHART) -> tuple[str, str]:
    """Chart.yaml's (version, appVersion)."""
    text = (chart / "Chart.yaml").read_text()
    found = {}
    for key in ("version", "appVersion"):
        m = re.search(rf'^{key}:\s*"?([^"\s]+)"?\s*$', text, re.M)
        if not m:
            raise ReleaseError(f"no {key} in {chart / 'Chart.yaml'}")
        found[key] = m.group(1)
    return found["version"], found["appVersion"]


def release_version(requested: str | None, repo: Path = REPO, chart: Path = CHART) -> str:
    """The version to release: ``__version__``; ``requested`` and Chart.yaml must agree with it."""
    version = project_version(repo)
    if requested and requested != version:
        raise ReleaseError(
            f"VERSION={requested} but src/license_keeper/__init__.py says {version}: the version is set there "
            f"(and in charts/license-keeper/Chart.yaml's version and appVersion); change it there and commit first"
        )
    chart_version, app_version = chart_versions(chart)
    if (chart_version, app_version) != (version, version):
        raise ReleaseError(
            f"charts/license-keeper/Chart.yaml has version {chart_version} and appVersion {app_version}; "
            f"both must be {version}, the __version__ in src/license_keeper/__init__.py"
        )
    return version


# --- the chart's values for the released image ------------------------------------------------------------


def pin_image(values_yaml: str, registry: str, repository: str, digest: str) -> str:
    """values.yaml with the image block's registry, repository and digest set (comments and the rest kept)."""
    if not DIGEST.match(digest):
        raise ReleaseError(f"not an image digest: {digest!r}")
    lines = values_yaml.splitlines(keepends=True)
    try:
        start = lines.index("image:\n")
    except ValueError:
        raise ReleaseError("values.yaml has no top-level image: block") from None
    wanted = {"registry": registry, "repository": repository, "digest": digest}
    done: set[str] = set()
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if line.strip() and not line.startswith(" "):
            break  # the next top-level key
        m = re.match(r"^  (registry|repository|digest):", line)
        if m:
            lines[i] = f"  {m.group(1)}: {json.dumps(wanted[m.group(1)])}\n"
            done.add(m.group(1))
    if done != set(wanted):
        raise ReleaseError(f"values.yaml's image block lacks {', '.join(sorted(set(wanted) - done))}")
    return "".join(lines)


def helm_push_digest(output: str) -> str:
    """The manifest digest `helm push` reports ("Digest: sha256:…")."""
    m = re.search(r"^Digest:\s*(sha256:[0-9a-f]{64})\s*$", output, re.M)
    if not m:
        raise ReleaseError(f"helm push reported no digest: {output.strip()[-500:]}")
    return m.group(1)


# --- running the tools ------------------------------------------------------------------------------------


@dataclass
class Tools:
    helm: str
    cosign: str
    podman: str
    cyclonedx: str
    build_image: str

    @classmethod
    def find(cls) -> Tools:
        build = REPO / "tools" / "controlplane" / "build.sh"

        def built(component: str, name: str) -> str:
            out = subprocess.run([str(build), "--print-dir", component], capture_output=True, text=True, check=True)
            path = Path(out.stdout.strip()) / name
            if not os.access(path, os.X_OK):
                raise ReleaseError(f"{name} is not built ({path}); run tools/controlplane/build.sh {component}")
            return str(path)

        cyclonedx = Path(sys.executable).parent / "cyclonedx-py"
        if not cyclonedx.exists():
            raise ReleaseError(f"{cyclonedx} not found: run with the dev virtualenv's python (make dev; make release)")
        return cls(
            helm=built("helm", "helm"),
            cosign=built("cosign", "cosign"),
            podman=str(REPO / "tools" / "image" / "podman.sh"),
            cyclonedx=str(cyclonedx),
            build_image=str(REPO / "tools" / "image" / "build.sh"),
        )


@dataclass
class Settings:
    registry: str
    version: str
    key: str
    public_key: str
    registry_ca: str | None = None
    auth_file: str | None = None
    local_image: str = ""
    dist: Path = REPO / "dist"
    build: bool = True

    @property
    def image_repository(self) -> str:
        return f"{self.registry}/{IMAGE_NAME}"

    @property
    def chart_repository(self) -> str:
        return f"{self.registry}/{CHART_PATH}/{CHART_NAME}"


@dataclass
class Released:
    version: str
    registry: str
    image: str  # <registry>/license-keeper@sha256:…
    image_digest: str
    image_tag: str
    chart: str  # oci://<registry>/charts/license-keeper
    chart_digest: str
    chart_package: str
    sbom: str
    public_key: str
    seconds: dict[str, float] = field(default_factory=dict)


class Release:
    def __init__(self, settings: Settings, tools: Tools) -> None:
        self.s = settings
        self.t = tools
        self.seconds: dict[str, float] = {}
        self._scratch: Path | None = None

    @property
    def _tmp(self) -> Path:
        """Scratch files (TLS and credential copies, the chart being packaged); removed by ``close()``."""
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="lk-release-"))
        return self._scratch

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> Release:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # tools with the registry's trust and credentials
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.s.auth_file:
            env["REGISTRY_AUTH_FILE"] = self.s.auth_file  # podman
            env["HELM_REGISTRY_CONFIG"] = self.s.auth_file
            docker = self._tmp / "docker"
            docker.mkdir(exist_ok=True)
            (docker / "config.json").unlink(missing_ok=True)
            (docker / "config.json").symlink_to(Path(self.s.auth_file).resolve())
            env["DOCKER_CONFIG"] = str(docker)  # cosign
        return env

    def run(self, *argv: str, env: Mapping[str, str] | None = None, timeout: float = 900) -> str:
        """stdout and stderr of a command that must succeed."""
        done = self._run(*argv, env=env, timeout=timeout)
        return done.stdout + done.stderr

    def _run(
        self, *argv: str, env: Mapping[str, str] | None = None, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(list(argv), capture_output=True, text=True, env=dict(env or self.env()),
                              timeout=timeout, check=False)  # fmt: skip
        if done.returncode != 0:
            name = Path(argv[0]).name
            raise ReleaseError(f"{name} {' '.join(argv[1:3])} … failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[-1500:]}")  # fmt: skip
        return done

    def podman_tls(self) -> list[str]:
        if not self.s.registry_ca:
            return []
        certs = self._tmp / "certs.d"
        certs.mkdir(exist_ok=True)
        shutil.copy(self.s.registry_ca, certs / "ca.crt")  # podman reads *.crt in --cert-dir as CAs
        return [f"--cert-dir={certs}"]

    def helm_tls(self) -> list[str]:
        return [f"--ca-file={self.s.registry_ca}"] if self.s.registry_ca else []

    def cosign_tls(self) -> list[str]:
        return [f"--registry-cacert={self.s.registry_ca}"] if self.s.registry_ca else []

    def cosign(self, *args: str) -> str:
        env = self.env()
        env.setdefault("COSIGN_PASSWORD", "")
        done = self._run(self.t.cosign, *args, env=env)
        if "TUF" in done.stderr:  # it tried to reach Sigstore's public infrastructure: not what a key pair needs
            raise ReleaseError(f"cosign {args[0]} reached for Sigstore's TUF repository: {done.stderr.strip()[-500:]}")
        return done.stdout + done.stderr

    def trusted_root(self) -> Path:
        path = self._tmp / "key-only-trusted-root.json"
        path.write_text(json.dumps(KEY_ONLY_TRUSTED_ROOT))
        return path

    def step(self, name: str, started: float) -> None:
        self.seconds[name] = round(time.monotonic() - started, 2)
        print(f"release: {name} ({self.seconds[name]} s)", file=sys.stderr, flush=True)

    # the steps
    def build_image(self) -> str:
        local = self.s.local_image or f"localhost/{IMAGE_NAME}:{self.s.version}"
        if self.s.build:
            built = self._run(self.t.build_image, env={**self.env(), "IMAGE": local})
            local = built.stdout.strip().splitlines()[-1]  # build.sh prints the image's name last, on stdout
        return local

    def push_image(self, local: str) -> str:
        digest_file = self._tmp / "image.digest"
        target = f"{self.s.image_repository}:{self.s.version}"
        self.run(self.t.podman, "push", "--quiet", "--format=oci", f"--digestfile={digest_file}",
                 *self.podman_tls(), local, f"docker://{target}")  # fmt: skip
        digest = digest_file.read_text().strip()
        if not DIGEST.match(digest):
            raise ReleaseError(f"podman push wrote no digest for {target}: {digest!r}")
        return digest

    def sbom(self, image_digest: str) -> Path:
        self.s.dist.mkdir(parents=True, exist_ok=True)
        out = self.s.dist / f"{IMAGE_NAME}-{self.s.version}.cdx.json"
        env = {**self.env(), "SOURCE_DATE_EPOCH": self._commit_time()}
        self.run(self.t.cyclonedx, "requirements", str(REPO / "requirements.lock"),
                 "--pyproject", str(REPO / "pyproject.toml"), "--mc-type", "application",
                 "--output-reproducible", "--output-format", "JSON", "-o", str(out), env=env)  # fmt: skip
        # The project's version is dynamic in pyproject.toml: name the released one on the root component.
        bom = json.loads(out.read_text())
        root = bom["metadata"]["component"]
        root["version"] = self.s.version
        root["purl"] = f"pkg:oci/{IMAGE_NAME}@{image_digest.replace(':', '%3A')}" \
                       f"?repository_url={self.s.image_repository}"  # fmt: skip
        out.write_text(json.dumps(bom, indent=2) + "\n")
        return out

    def _commit_time(self) -> str:
        done = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%ct"], capture_output=True,
                              text=True, check=False)  # fmt: skip
        return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else str(int(time.time()))

    def package_chart(self, image_digest: str) -> Path:
        work = self._tmp / "chart"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(CHART, work / CHART_NAME)
        values = work / CHART_NAME / "values.yaml"
        values.write_text(pin_image(values.read_text(), self.s.registry, IMAGE_NAME, image_digest))
        self.run(self.t.helm, "lint", str(work / CHART_NAME), "--set", "konnect.controlPlaneId=x",
                 "--set", "konnect.tlsSecretName=x")  # fmt: skip
        self.run(self.t.helm, "package", str(work / CHART_NAME), "--version", self.s.version,
                 "--app-version", self.s.version, "--destination", str(self.s.dist))  # fmt: skip
        package = self.s.dist / f"{CHART_NAME}-{self.s.version}.tgz"
        rendered = self.run(self.t.helm, "template", "lk", str(package), "--set", "konnect.controlPlaneId=x",
                            "--set", "konnect.tlsSecretName=x", "--show-only", "templates/deployment.yaml")  # fmt: skip
        expected = f"{self.s.image_repository}@{image_digest}"
        if f'image: "{expected}"' not in rendered:
            raise ReleaseError(f"the packaged chart does not render image {expected}")
        return package

    def push_chart(self, package: Path) -> str:
        out = self.run(self.t.helm, "push", str(package), f"oci://{self.s.registry}/{CHART_PATH}", *self.helm_tls())
        return helm_push_digest(out)

    def _sign_args(self) -> list[str]:
        return [f"--key={self.s.key}", "--tlog-upload=false", "--yes", *self.cosign_tls()]

    def _verify_args(self) -> list[str]:
        return [f"--key={self.s.public_key}", "--insecure-ignore-tlog=true", f"--trusted-root={self.trusted_root()}",
                *self.cosign_tls()]  # fmt: skip

    def sign_image(self, image_digest: str, sbom: Path) -> None:
        """The image's signature, and the SBOM as a signed in-toto attestation (predicate type cyclonedx)."""
        ref = f"{self.s.image_repository}@{image_digest}"
        self.cosign("sign", *self._sign_args(), ref)
        self.cosign("attest", *self._sign_args(), "--type=cyclonedx", f"--predicate={sbom}", ref)

    def sign_chart(self, chart_digest: str) -> None:
        self.cosign("sign", *self._sign_args(), f"{self.s.chart_repository}@{chart_digest}")

    def verify_image(self, image_digest: str) -> None:
        ref = f"{self.s.image_repository}@{image_digest}"
        self.cosign("verify", *self._verify_args(), ref)
        self.cosign("verify-attestation", *self._verify_args(), "--type=cyclonedx", ref)

    def verify_chart(self, chart_digest: str) -> None:
        self.cosign("verify", *self._verify_args(), f"{self.s.chart_repository}@{chart_digest}")

    def run_all(self) -> Released:
        self.s.dist.mkdir(parents=True, exist_ok=True)
        begun = t = time.monotonic()
        try:
            local = self.build_image()
            self.step("image built", t)
            t = time.monotonic()
            image_digest = self.push_image(local)
            self.step("image pushed", t)
            t = time.monotonic()
            sbom = self.sbom(image_digest)
            self.step("SBOM made", t)
            t = time.monotonic()
            package = self.package_chart(image_digest)
            chart_digest = self.push_chart(package)
            self.step("chart packaged and pushed", t)
            t = time.monotonic()
            self.sign_image(image_digest, sbom)
            self.sign_chart(chart_digest)
            self.step("signed and attested", t)
            t = time.monotonic()
            self.verify_image(image_digest)
            self.verify_chart(chart_digest)
            self.step("verified", t)
        finally:
            self.close()
        self.seconds["total"] = round(time.monotonic() - begun, 2)
        released = Released(
            version=self.s.version, registry=self.s.registry,
            image=f"{self.s.image_repository}@{image_digest}", image_digest=image_digest,
            image_tag=f"{self.s.image_repository}:{self.s.version}",
            chart=f"oci://{self.s.registry}/{CHART_PATH}/{CHART_NAME}", chart_digest=chart_digest,
            chart_package=str(package), sbom=str(sbom), public_key=self.s.public_key, seconds=self.seconds,
        )  # fmt: skip
        (self.s.dist / f"release-{self.s.version}.json").write_text(json.dumps(asdict(released), indent=2) + "\n")
        return released


def _registry(value: str) -> str:
    value = value.strip().rstrip("/")
    if not value or "://" in value or "@" in value or any(c.isspace() for c in value):
        raise ReleaseError(f"REGISTRY must be a registry host[:port][/path], not {value!r}")
    return value


def settings_from(args: argparse.Namespace) -> Settings:
    version = release_version(args.version)
    registry = _registry(args.registry or "")
    key = args.key or "cosign.key"
    public = args.public_key or (key[: -len(".key")] + ".pub" if key.endswith(".key") else "")
    if not public:
        raise ReleaseError("COSIGN_PUBLIC_KEY is required when COSIGN_KEY does not end in .key")
    for name, path in (("REGISTRY_CA", args.registry_ca), ("REGISTRY_AUTH_FILE", args.auth_file)):
        if path and not Path(path).is_file():
            raise ReleaseError(f"{name}={path}: no such file")
    if "://" not in key and not Path(key).is_file():
        raise ReleaseError(f"COSIGN_KEY={key}: no such file (cosign generate-key-pair makes cosign.key and cosign.pub)")
    return Settings(
        registry=registry, version=version, key=key, public_key=public,
        registry_ca=args.registry_ca or None, auth_file=args.auth_file or None, local_image=args.local_image or "",
        dist=Path(args.dist), build=not args.no_build,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    env = os.environ
    p = argparse.ArgumentParser(prog="tools/release/release.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--registry", default=env.get("REGISTRY"), help="host[:port][/path] (REGISTRY)")
    p.add_argument("--version", default=env.get("VERSION"), help="must equal __version__ (VERSION)")
    p.add_argument("--registry-ca", default=env.get("REGISTRY_CA"), help="CA file for the registry (REGISTRY_CA)")
    p.add_argument("--auth-file", default=env.get("REGISTRY_AUTH_FILE"), help="config.json (REGISTRY_AUTH_FILE)")
    p.add_argument("--key", default=env.get("COSIGN_KEY"), help="cosign private key (COSIGN_KEY; cosign.key)")
    p.add_argument("--public-key", default=env.get("COSIGN_PUBLIC_KEY"), help="for the check (COSIGN_PUBLIC_KEY)")
    p.add_argument("--local-image", default=env.get("LOCAL_IMAGE"), help="local tag to build and push")
    p.add_argument("--no-build", action="store_true", help="push --local-image as it is (already built)")
    p.add_argument("--dist", default=env.get("DIST") or str(REPO / "dist"), help="output directory (dist/)")
    args = p.parse_args(argv)
    try:
        settings = settings_from(args)
        released = Release(settings, Tools.find()).run_all()
    except ReleaseError as e:
        print(f"release: {e}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(released), indent=2))
    print(f"\nrelease: {released.version} in {released.seconds['total']} s; install with\n"
          f"  cosign verify --key {released.public_key} {released.chart.removeprefix('oci://')}:{released.version}\n"
          f"  helm install license-keeper {released.chart} --version {released.version} ...",
          file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
