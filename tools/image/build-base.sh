#!/usr/bin/env bash
# Builds a local stand-in for the public Python base image when none can be pulled (CI has no container
# registry): Debian bookworm (Python 3.11) with python3, python3-venv and ca-certificates, from the host's
# configured apt sources, imported into podman. Prints the image name.
#
#   tools/image/build-base.sh            # reuse the image if it was built from this script already
#   tools/image/build-base.sh --force    # rebuild
#
# The image carries the hash of this script as a label: editing the script rebuilds it, nothing else does.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
IMAGE="${BASE_IMAGE:-localhost/license-keeper-python-base:bookworm}"
SUITE=bookworm
PODMAN="$here/podman.sh"
recipe="$(sha256sum "$0" | cut -c1-16)"

if [[ "${1:-}" != "--force" ]] &&
    [[ "$("$PODMAN" image inspect --format '{{index .Labels "recipe"}}' "$IMAGE" 2>/dev/null || true)" == "$recipe" ]]; then
    echo "$IMAGE"
    exit 0
fi

for tool in mmdebstrap podman; do
    command -v "$tool" >/dev/null || { echo "build-base.sh: $tool not found (apt-get install podman runc mmdebstrap)" >&2; exit 1; }
done

# The host's apt sources (deb822 or one-line), so the base comes from the same mirror the host uses.
sources=()
for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list; do
    [[ -s "$f" ]] && grep -q "$SUITE" "$f" && sources+=("$f")
done
[[ ${#sources[@]} -gt 0 ]] || { echo "build-base.sh: no apt source for $SUITE in /etc/apt" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# essential: no apt, no init; docs, man pages and locales are left out (copyright files kept).
echo "build-base.sh: building $IMAGE with mmdebstrap (about a minute or two)" >&2
if ! mmdebstrap --quiet --variant=essential \
    --include=python3,python3-venv,ca-certificates \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*' \
    "$SUITE" "$work/rootfs.tar" "${sources[@]}" >"$work/mmdebstrap.log" 2>&1; then
    tail -n 40 "$work/mmdebstrap.log" >&2
    echo "build-base.sh: mmdebstrap failed" >&2
    exit 1
fi

"$PODMAN" import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --change "LABEL recipe=$recipe" \
    "$work/rootfs.tar" "$IMAGE" >/dev/null
echo "$IMAGE"
