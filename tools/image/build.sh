#!/usr/bin/env bash
# Builds the container image from the repository's Dockerfile (what `make image` runs). Prints the image name.
#
#   IMAGE=license-keeper:dev PYTHON_IMAGE=python:3.12-slim-bookworm tools/image/build.sh
#
# Engine: podman when installed (with tools/image/containers.conf), else docker.
# Base: PYTHON_IMAGE when set; else the Dockerfile's public default when it is present or can be pulled;
# else (podman, no registry reachable, as in CI) a local stand-in built by tools/image/build-base.sh.
# With podman: host network for the build (no bridge networking needed), and the host's CA bundle
# bind-mounted read-only for pip's downloads (behind a TLS-inspecting proxy); it does not end up in the image.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$repo/src/license_keeper/__init__.py")"
IMAGE="${IMAGE:-localhost/license-keeper:$version}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
default_base="$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$repo/Dockerfile")"

# shellcheck source=engine.sh
source "$here/engine.sh" build.sh

base="${PYTHON_IMAGE:-}"
if [[ -z "$base" ]]; then
    if "${engine[@]}" image inspect "$default_base" >/dev/null 2>&1 ||
        "${engine[@]}" pull --quiet "$default_base" >/dev/null 2>&1; then
        base="$default_base"
    elif [[ "${engine[0]}" != docker ]]; then
        echo "build.sh: $default_base cannot be pulled; using a local bookworm base" >&2
        base="$("$here/build-base.sh")"
    else
        echo "build.sh: $default_base cannot be pulled; set PYTHON_IMAGE to a Python 3.11+ image" >&2
        exit 1
    fi
fi

args=(build --build-arg "PYTHON_IMAGE=$base" --label "org.opencontainers.image.base.name=$base"
    -t "$IMAGE" -f "$repo/Dockerfile")
if [[ "${engine[0]}" != docker ]]; then
    args+=(--network host)  # podman: no bridge network needed (none works on the project's VMs)
    # docker build has no -v; podman's volume covers RUN steps only and is never committed to a layer.
    if [[ -s "$CA_BUNDLE" ]]; then args+=(-v "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro"); fi
fi
"${engine[@]}" "${args[@]}" ${BUILD_ARGS:-} "$repo" >&2
# Every rebuild leaves the previous layers behind as untagged images; drop those unused for a week.
"${engine[@]}" image prune --force --filter until=168h >/dev/null 2>&1 || true
echo "$IMAGE"
