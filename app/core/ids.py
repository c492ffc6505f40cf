"""Public identifiers: a type prefix and random base62, like OpenAI's ``ftjob-abc123``."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def random_token(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_id(prefix: str, length: int = 24) -> str:
    """``new_id("ftjob")`` -> ``ftjob-`` followed by 24 random characters (~143 bits)."""
    return f"{prefix}-{random_token(length)}"
