# Slim gateway image: FastAPI + migrations + CLI, no torch (the gateway never imports it).
# Build from the repository root: docker build -f docker/gateway.Dockerfile -t emoe-gate/gateway .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EMOE_HOME=/data

WORKDIR /app
COPY docker/requirements-gateway.txt /tmp/requirements-gateway.txt
RUN pip install --no-cache-dir -r /tmp/requirements-gateway.txt

COPY pyproject.toml README.md alembic.ini ./
COPY settings ./settings
COPY audit ./audit
COPY policies ./policies
COPY workers ./workers
COPY gateway ./gateway
COPY cli ./cli
COPY migrations ./migrations
COPY emoe ./emoe
RUN pip install --no-cache-dir --no-deps . \
    && useradd --create-home --uid 10001 emoe \
    && mkdir -p /data \
    && chown emoe /data

USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["emoe-gate", "serve", "--host", "0.0.0.0", "--port", "8000"]
