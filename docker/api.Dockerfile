# The HTTP front end: slim Python, no torch. Build from the repository root:
#   docker build -f docker/api.Dockerfile -t safepatch-api .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 safepatch \
    && mkdir /data && chown safepatch /data
WORKDIR /srv/safepatch

# Dependencies first, so code changes don't reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir app contracts safepatch workers && pip install . && pip uninstall -y safepatch

COPY alembic.ini ./
COPY migrations ./migrations
COPY contracts ./contracts
COPY app ./app
COPY workers ./workers
COPY safepatch ./safepatch
# Editable: `safepatch db upgrade` finds migrations/ next to the source tree.
RUN pip install --no-deps -e .

USER safepatch
ENV SAFEPATCH_ENV=prod \
    SAFEPATCH_DATA_DIR=/data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["safepatch", "serve", "--host", "0.0.0.0", "--port", "8000"]
