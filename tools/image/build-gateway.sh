#!/usr/bin/env bash
# Builds the gateway image (tools/image/Containerfile.gateway) on top of the keeper's image; prints its name.
#
#   tools/image/build-gateway.sh
#   KEEPER_IMAGE=localhost/license-keeper:0.1.0 IMAGE=localhost/license-keeper-gateway:0.1.0 tools/image/build-gateway.sh
#
# KEEPER_IMAGE defaults to what `make image` builds (localhost/license-keeper:<version>) and must exist
# locally: build it first. IMAGE defaults to localhost/license-keeper-gateway:<version>.
# Engine: podman when installed (with tools/image/containers.conf), else docker. The build runs nothing
# inside a container (no RUN step), so it needs no network.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$repo/src/license_keeper/__init__.py")"
KEEPER_IMAGE="${KEEPER_IMAGE:-localhost/license-keeper:$version}"
IMAGE="${IMAGE:-localhost/license-keeper-gateway:$version}"

# shellcheck source=engine.sh
source "$here/engine.sh" build-gateway.sh

if ! "${engine[@]}" image inspect "$KEEPER_IMAGE" >/dev/null 2>&1; then
    echo "build-gateway.sh: $KEEPER_IMAGE not found; build the keeper's image first (make image)" >&2
    exit 1
fi
"${engine[@]}" build --build-arg "KEEPER_IMAGE=$KEEPER_IMAGE" \
    --label "org.opencontainers.image.base.name=$KEEPER_IMAGE" \
    -t "$IMAGE" -f "$here/Containerfile.gateway" ${BUILD_ARGS:-} "$here" >&2
echo "$IMAGE"
