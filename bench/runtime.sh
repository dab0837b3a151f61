#!/usr/bin/env bash
# The keeper installed as the image installs it, for the benchmarks: a virtualenv with only the
# runtime dependencies from requirements.lock (hash-checked), the project built from a clean copy of
# what the Dockerfile copies (pyproject.toml, README.md, src/) with the build backend pinned by
# build-requirements.lock, installed as a regular (not editable) package, bytecode compiled. The
# interpreter is the image's own kind when this machine has it: Debian's python3 (the local base
# image is Debian 12's 3.11, built with PGO and LTO), else $PYTHON. A dev virtualenv's interpreter
# (pyenv, say) is often built without those and starts slower.
#   bench/runtime.sh            prints the virtualenv's python, (re)building it when an input changed
# Lands in ${LICENSE_KEEPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/license-keeper}/bench-runtime.
# UV (default .venv/bin/uv, which `make bench` installs) and BENCH_PYTHON override the tools.
set -euo pipefail
cd "$(dirname "$0")/.." >/dev/null
cache="${LICENSE_KEEPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/license-keeper}"
root="$cache/bench-runtime"
uv="${UV:-.venv/bin/uv}"
base="${BENCH_PYTHON:-}"
if [[ -z "$base" ]]; then
  if [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    base=/usr/bin/python3
  else
    base="${PYTHON:-python3}"
  fi
fi
[[ -x "$uv" ]] || { echo "bench/runtime.sh: $uv missing; run 'make dev' (requirements-dev.lock installs uv into .venv)" >&2; exit 2; }
# Rebuilt when any input changed: the files and their names, this script, uv, the interpreter.
digest="$( { find src -type f -not -path '*/__pycache__/*' -not -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha256sum;
             sha256sum requirements.lock build-requirements.lock pyproject.toml README.md "$0";
             "$uv" --version; "$base" -c 'import sys; print(sys.executable, sys.version)'; } | sha256sum | cut -c1-16)"
mkdir -p "$cache"
exec 9>"$cache/bench-runtime.lock"
flock 9  # one build at a time; a second caller waits and then finds it built
if [[ "$(cat "$root/.digest" 2>/dev/null)" != "$digest" ]]; then
  project="$(mktemp -d)"
  trap 'rm -rf "$project"' EXIT
  cp pyproject.toml README.md "$project/"
  mkdir "$project/src"
  tar -C src --exclude=__pycache__ --exclude='*.egg-info' -cf - . | tar -C "$project/src" -xf -
  rm -rf "$root"
  "$base" -m venv --without-pip "$root" >&2
  # exactly the lock, resolving nothing (as the Dockerfile installs it), then checked complete
  "$uv" pip install --quiet --python "$root/bin/python" --compile-bytecode --no-deps --require-hashes \
    -r requirements.lock >&2
  "$uv" pip check --quiet --python "$root/bin/python" >&2
  "$uv" pip install --quiet --python "$root/bin/python" --compile-bytecode --no-deps \
    --build-constraints build-requirements.lock "$project" >&2
  echo "$digest" > "$root/.digest"
fi
echo "$root/bin/python"
