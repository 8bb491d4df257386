# Graft HTTP service: API + embedded workers, SQLite and blobs under /data by default.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, pinned, from the CPU index: the project's own pin is then already satisfied,
# so pip never resolves a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY app ./app
# Editable, so the migrations next to the package are found at run time.
RUN pip install -e ".[postgres]" \
    && python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"

RUN useradd --create-home --uid 10001 graft \
    && mkdir -p /data \
    && chown graft:graft /data
USER graft

ENV GRAFT_DATABASE_URL=sqlite:////data/graft.db \
    GRAFT_STORAGE_DIR=/data/blobs \
    GRAFT_DEVICE=cpu
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]

CMD ["graft", "serve", "--host", "0.0.0.0", "--port", "8000"]
