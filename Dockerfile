# modelwatch in a container: `modelwatch serve` as a non-root user, config from a mounted
# file (a Kubernetes ConfigMap: deploy/k8s/), models from S3 or a mounted volume.
#   docker build -t modelwatch:0.1.0 .
#   docker run -p 8500:8500 -p 8501:8501 -v "$PWD/models:/models:ro" modelwatch:0.1.0 \
#     --model_name=half_plus_two --model_base_path=/models/half_plus_two   # TF Serving's flags
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY loader ./loader
COPY policies ./policies
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin modelwatch \
    && mkdir -p /etc/modelwatch /var/cache/modelwatch \
    && chown modelwatch /var/cache/modelwatch
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY deploy/container-config.yaml /etc/modelwatch/config.yaml
USER 10001
WORKDIR /var/cache/modelwatch
EXPOSE 8500 8501
# SIGTERM: stop accepting, answer what is in flight (up to 30 s), unload, exit 0.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/healthz', timeout=2)"]
ENTRYPOINT ["modelwatch", "serve"]
CMD ["--config", "/etc/modelwatch/config.yaml"]
