# CUDA worker image: the PyPI torch wheel for Linux ships its CUDA libraries; the host's NVIDIA container
# runtime provides the driver. Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t emoe-gate/worker .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EMOE_HOME=/data \
    EMOE_DEVICE=cuda \
    EMOE_DTYPE=float16 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /app
# torch first and pinned, as in scripts/setup.sh
RUN pip install --no-cache-dir "torch==2.13.0"

COPY pyproject.toml README.md alembic.ini ./
COPY settings ./settings
COPY audit ./audit
COPY policies ./policies
COPY workers ./workers
COPY gateway ./gateway
COPY cli ./cli
COPY migrations ./migrations
COPY emoe ./emoe
COPY reference ./reference
RUN pip install --no-cache-dir . \
    && pip install --no-cache-dir --no-deps "open-clip-torch==3.3.0" "clip-benchmark==1.6.2" \
    && useradd --create-home --uid 10001 emoe \
    && mkdir -p /data \
    && chown emoe /data

USER 10001
# EMOE_ENSEMBLE names the ensemble: a merged checkpoint folder mounted under /models, or a segmoe YAML.
CMD ["emoe-gate", "worker", "--queues", "gate,render,hooks", "--concurrency", "1"]
