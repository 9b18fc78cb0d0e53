# syntax=docker/dockerfile:1
# Build: docker build -t meta-dataset-quality-exporter .
#        (or `buildah bud --format docker`; BASE may name any Debian-like image with python3 and python3-venv)
# Run:   docker run -p 10070:10070 -v $PWD/config.yaml:/etc/meta-dataset-quality-exporter/config.yaml:ro \
#          -v $PWD/token:/run/secrets/meta_access_token:ro meta-dataset-quality-exporter
#        (with `credentials: {default: {token_file: /run/secrets/meta_access_token}}` in config.yaml)
# tests/test_container.py builds this file with buildah and runs the image's entrypoint and healthcheck.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# A virtual environment works the same on the official Python image and on Debian's python3 (which refuses a
# system-wide pip install); both stages share BASE, so the venv's interpreter path exists in the final one.
RUN python3 -m venv /opt/meta-dataset-quality-exporter
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN /opt/meta-dataset-quality-exporter/bin/pip install --no-cache-dir --disable-pip-version-check . \
 && /opt/meta-dataset-quality-exporter/bin/meta-dataset-quality-exporter --version

FROM ${BASE}
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin exporter
COPY --from=build /opt/meta-dataset-quality-exporter /opt/meta-dataset-quality-exporter
ENV PATH=/opt/meta-dataset-quality-exporter/bin:$PATH PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 10070
# Reads the listen address from the same config as `run`; exits 0 when /-/healthy answers (a 401 from basic
# auth counts: the server is up) and retries over TLS when the listener speaks only TLS.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
  CMD ["meta-dataset-quality-exporter", "healthcheck", "--config", "/etc/meta-dataset-quality-exporter/config.yaml"]
ENTRYPOINT ["meta-dataset-quality-exporter"]
CMD ["run", "--config", "/etc/meta-dataset-quality-exporter/config.yaml"]
