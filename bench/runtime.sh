#!/usr/bin/env bash
# The keeper installed as the image installs it, for the benchmarks: a virtualenv with only the
# runtime dependencies from requirements.lock (hash-checked), the project as a regular (not editable)
# install, bytecode compiled. The interpreter is the image's own kind when this machine has it:
# Debian's python3 (the local base image is Debian 12's 3.11, built with PGO and LTO), else $PYTHON.
# A dev virtualenv's interpreter (pyenv, say) is often built without those and starts slower.
#   bench/runtime.sh            prints the virtualenv's python, (re)building it when a source changed
# Lands in ${LICENSE_KEEPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/license-keeper}/bench-runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${LICENSE_KEEPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/license-keeper}/bench-runtime"
uv=.venv/bin/uv
base="${BENCH_PYTHON:-}"
if [[ -z "$base" ]]; then
  if [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    base=/usr/bin/python3
  else
    base="${PYTHON:-python3}"
  fi
fi
# Rebuilt when the lock, the project or the interpreter changed.
digest="$( { cat requirements.lock pyproject.toml; find src -name '*.py' -print0 | sort -z | xargs -0 cat;
             "$base" -c 'import sys; print(sys.executable, sys.version)'; } | sha256sum | cut -c1-16)"
if [[ "$(cat "$root/.digest" 2>/dev/null)" != "$digest" ]]; then
  [[ -x "$uv" ]] || { echo "bench/runtime.sh: $uv missing; run 'make $uv' (or make bench)" >&2; exit 2; }
  rm -rf "$root"
  "$base" -m venv --without-pip "$root" >&2
  "$uv" pip install --quiet --python "$root/bin/python" --compile-bytecode --require-hashes -r requirements.lock >&2
  "$uv" pip install --quiet --python "$root/bin/python" --compile-bytecode --no-deps . >&2
  echo "$digest" > "$root/.digest"
fi
echo "$root/bin/python"
