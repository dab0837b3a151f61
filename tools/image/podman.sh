#!/usr/bin/env bash
# podman with the repository's containers.conf (runc, ulimits the VM allows). Same arguments as podman.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
exec podman "$@"
