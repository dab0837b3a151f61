# license-keeper container image.
#   make image                      (podman or docker; builds a local base when none can be pulled)
#   docker build -t license-keeper:0.1.0 .
#   podman build --build-arg PYTHON_IMAGE=localhost/license-keeper-python-base:bookworm -t license-keeper:0.1.0 .
#
# The builder stage makes a virtualenv at /opt/license-keeper from the hash-checked lock files
# (requirements.lock, build-requirements.lock; `make lock` regenerates them from pyproject.toml) and this
# checkout; the final stage copies only that virtualenv onto the base. The final image has no pip, no
# wheels, no build tools and no setuid/setgid files, and runs as the numeric user 10001 that owns nothing.
# The process needs no shell: the entry point is exec-form and the chart mounts a read-only root
# filesystem plus /tmp. Both stages use the same base, so the virtualenv's python link resolves in both.
# No `# syntax` line: nothing here needs a BuildKit frontend image.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# PIP_CERT: pip trusts the system bundle (which a build behind a TLS-inspecting proxy bind-mounts from
# the host) instead of its own copy. These variables stay in this stage.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependencies first: this layer is reused until a lock file changes. Exactly the locks: --no-deps, so
# pip resolves nothing (a newer upstream release can neither change nor break the build), hashes checked,
# --only-binary (nothing compiled, no compiler); `pip check` then fails the build when a lock misses a
# dependency.
COPY requirements.lock build-requirements.lock ./
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip install --quiet --no-deps --require-hashes --only-binary :all: -r build-requirements.lock \
 && /opt/build/bin/pip check \
 && python3 -m venv /opt/license-keeper \
 && /opt/license-keeper/bin/pip install --quiet --no-deps --require-hashes --only-binary :all: -r requirements.lock \
 && /opt/license-keeper/bin/pip check
COPY pyproject.toml README.md ./
COPY src ./src
# The project itself (no dependencies: they are all installed above), then pip leaves the virtualenv.
RUN /opt/build/bin/pip wheel --quiet --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
 && /opt/license-keeper/bin/pip install --quiet --no-deps /tmp/wheels/license_keeper-*.whl \
 && /opt/license-keeper/bin/python -m pip uninstall --quiet --yes pip setuptools \
 && rm -f /opt/license-keeper/bin/activate* /opt/license-keeper/bin/Activate.ps1

FROM ${PYTHON_IMAGE}
# Off the base: pip and the wheels that could bring it back (ensurepip's, Debian's python-wheels), and
# every setuid/setgid bit, of files and directories (nothing here changes user or group).
# Then the runtime user, owning no file.
RUN set -eu; \
    python3 -m pip uninstall --quiet --yes pip setuptools wheel >/dev/null 2>&1 || true; \
    rm -rf /usr/share/python-wheels /usr/local/bin/pip /usr/local/bin/pip3*; \
    ensurepip="$(python3 -c 'import ensurepip, os; print(os.path.dirname(ensurepip.__file__))' 2>/dev/null || true)"; \
    if [ -n "$ensurepip" ]; then rm -rf "$ensurepip"; fi; \
    find / -xdev -perm /6000 -exec chmod ug-s {} +; \
    echo 'license-keeper:x:10001:10001:license-keeper:/nonexistent:/usr/sbin/nologin' >> /etc/passwd; \
    echo 'license-keeper:x:10001:' >> /etc/group
COPY --from=builder /opt/license-keeper /opt/license-keeper
ENV PATH=/opt/license-keeper/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# metrics, probes
EXPOSE 8080 8081
ENTRYPOINT ["/opt/license-keeper/bin/license-keeper"]
CMD ["run"]
