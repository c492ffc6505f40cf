"""Process-wide logging setup, used by every entry point (serve, worker, CLI)."""

from __future__ import annotations

import logging

from app.core.redact import redact_secrets

FORMAT = "%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """Masks passwords in URLs and our API keys in the whole line, traceback included: a
    library's exception text (a connection error, a failed request) may carry either."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_secrets(super().format(record))


def configure_logging(level: str = "INFO") -> None:
    """Log to stderr in one format; quiet libraries that are chatty at INFO."""
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
