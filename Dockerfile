# syntax=docker/dockerfile:1
# Build: docker build -t meta-dataset-quality-exporter .
# Run:   docker run -p 10070:10070 -v $PWD/config.yaml:/etc/meta-dataset-quality-exporter/config.yaml:ro \
#          -v $PWD/token:/run/secrets/meta_access_token:ro meta-dataset-quality-exporter
#        (with `credentials: {default: {token_file: /run/secrets/meta_access_token}}` in config.yaml)
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && pip wheel --no-cache-dir --wheel-dir /wheels "prometheus-client>=0.20,<1" "httpx>=0.27,<1" "pyyaml>=6,<7" "bcrypt>=4.1,<6"

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin exporter
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
USER 10001:10001
EXPOSE 10070
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:10070/-/healthy', timeout=4).status != 200)"]
ENTRYPOINT ["meta-dataset-quality-exporter"]
CMD ["run", "--config", "/etc/meta-dataset-quality-exporter/config.yaml"]
