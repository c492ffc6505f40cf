"""Taking secrets and server details out of text that leaves the process: log lines, settings
errors, and what a tenant reads (job errors, job events, audit payloads).

Text is cleaned where it is written, not where it is raised: a library's exception message
carries whatever it likes (a DSN, an absolute path), and the code that raises it cannot know
who reads it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

# scheme://user:password@host: the password, up to the last "@" before the host (a password
# may hold an "@" that was not percent-encoded).
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)(?P<secret>[^\s/]*)@", re.I)
# Our API keys (app.auth.service: "sp-"/"spa-" and 48 characters): the display prefix stays, as
# in the audit trail, so a line can still be matched to a key.
_API_KEY = re.compile(r"\b(?P<prefix>spa?-[A-Za-z0-9]{5})[A-Za-z0-9]{20,}")


def mask_url(url: str) -> str:
    """``redis://:s3cret@redis:6379/0`` -> ``redis://:***@redis:6379/0``; the rest is kept, so
    an error still says which server and which user."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not parseable as a URL: mask whatever looks like credentials
        return redact_secrets(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def redact_secrets(text: str) -> str:
    """Passwords in URLs and API keys in free text (a log line, a traceback)."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _API_KEY.sub(lambda m: f"{m['prefix']}{MASK}", text)


def relative_paths(text: str, root: Path) -> str:
    """``/srv/data/models/ft-x/model.safetensors: ...`` -> ``models/ft-x/model.safetensors: ...``
    for ``root=/srv/data``: tenants read names, not the server's directory layout."""
    prefix = str(root).rstrip("/")
    if not prefix:
        return text
    # The root itself becomes "."; "/srv/data2" is another directory and stays as it is.
    pattern = re.compile(re.escape(prefix) + r"(?:/|(?![\w-]|\.\w))")
    return pattern.sub(lambda m: "" if m[0].endswith("/") else ".", text)


def relative_paths_in(value: Any, root: Path) -> Any:
    """``relative_paths`` over the strings of a JSON-like value (an event's data)."""
    if isinstance(value, str):
        return relative_paths(value, root)
    if isinstance(value, dict):
        return {key: relative_paths_in(item, root) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [relative_paths_in(item, root) for item in value]
    return value
