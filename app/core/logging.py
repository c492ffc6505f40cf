"""Process-wide logging setup, used by every entry point (serve, worker, CLI)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """Log to stderr in one format; quiet libraries that are chatty at INFO."""
    logging.basicConfig(level=level.upper(), format=FORMAT, force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
