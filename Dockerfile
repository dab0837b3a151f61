# syntax=docker/dockerfile:1
# license-keeper container image.
#   docker build -t license-keeper:0.1.0 .
# Stage 1 builds the wheel from this checkout; stage 2 installs it (and its dependencies from PyPI)
# into a plain python:3.12-slim and runs as the unprivileged user 10001. The process needs no shell:
# the entrypoint is exec-form and the chart mounts a read-only root filesystem plus /tmp.

ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install /wheels/license_keeper-*.whl \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin license-keeper
USER 10001:10001
# metrics, probes
EXPOSE 8080 8081
ENTRYPOINT ["license-keeper"]
CMD ["run"]
