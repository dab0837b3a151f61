# Sourced by the image scripts: sets `engine` (an array) to podman with the repository's containers.conf
# when podman is installed, else docker; exits with a hint when neither is. $1 names the caller in errors.
if command -v podman >/dev/null; then
    engine=("$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/podman.sh")
elif command -v docker >/dev/null; then
    engine=(docker)
else
    echo "$1: neither podman nor docker found (apt-get install podman runc)" >&2
    exit 1
fi
