# Graft images. Two targets, built from one file, never sharing a torch build:
#   docker build -t graft:0.1.0 .                                  # the default: CPU torch;
#       API + embedded workers (SQLite, blobs under /data), or a CPU Celery worker
#   docker build --target worker-gpu -t graft-worker-gpu:0.1.0 .   # CUDA torch: a GPU worker
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 graft \
    && mkdir -p /data \
    && chown graft:graft /data
WORKDIR /app


# A Celery worker on one NVIDIA GPU: `graft worker --executor celery --queues gpu`.
# torch's CUDA wheels bring their own CUDA runtime; the host needs only the driver and the
# NVIDIA container toolkit (compose: deploy.resources.reservations.devices).
FROM base AS worker-gpu
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY app ./app
RUN pip install -e ".[postgres,s3,celery]" \
    && python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__; assert torch.version.cuda, 'not a CUDA build'"
USER graft
ENV GRAFT_EXECUTOR=celery \
    GRAFT_DEVICE=cuda \
    GRAFT_STORAGE_DIR=/data/blobs
CMD ["graft", "worker", "--executor", "celery", "--queues", "gpu", "--device", "cuda:0"]


# The default image (last stage): CPU torch only.
FROM base AS cpu
# torch first, pinned, from the CPU index: the project's own pin is then already satisfied,
# so pip never resolves a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY app ./app
# Editable, so the migrations next to the package are found at run time.
RUN pip install -e ".[postgres,s3,celery]" \
    && python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__; assert torch.version.cuda is None, 'a CUDA build in the CPU image'"
USER graft

ENV GRAFT_DATABASE_URL=sqlite:////data/graft.db \
    GRAFT_STORAGE_DIR=/data/blobs \
    GRAFT_DEVICE=cpu
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]

CMD ["graft", "serve", "--host", "0.0.0.0", "--port", "8000"]
