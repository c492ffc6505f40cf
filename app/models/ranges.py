"""The byte ranges a model download sends, read from ``Range`` and ``If-Range`` as Starlette's
``FileResponse`` reads them, so the audit record names the bytes that were sent (``start`` and
``end``, inclusive), never the raw header. A header that ``FileResponse`` would answer with a
plain-text 400 or 416 is refused here first, with our error body and before any audit record.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import formatdate

from app.core.errors import AppError, InvalidRequest

MAX_RANGES = 100  # FileResponse.max_ranges: past it the whole file is sent


class RangeNotSatisfiable(AppError):
    status_code = 416
    type = "invalid_request_error"
    code = "range_not_satisfiable"


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in Content-Range


def requested_ranges(
    range_header: str | None,
    if_range: str | None,
    *,
    etag: str,
    mtime: float,
    size: int,
) -> list[ByteRange] | None:
    """The ranges to send, merged and in order; ``None`` for the whole file (no ``Range``, an
    ``If-Range`` that no longer matches, or more ranges than are served)."""
    if range_header is None:
        return None
    if if_range is not None and (
        if_range.startswith("W/") or if_range not in (etag, formatdate(mtime, usegmt=True))
    ):
        return None  # the file changed since the client's first part: all of it again
    units, equals, spec = range_header.partition("=")
    if not equals or units.strip().lower() != "bytes":
        raise InvalidRequest(
            "Invalid Range header: only 'bytes=start-end' ranges are served.",
            param="Range",
            code="invalid_range",
        )
    if spec.count(",") + 1 > MAX_RANGES:
        return None
    ranges = _parse(spec, size)
    if not ranges:
        raise InvalidRequest(
            "Invalid Range header: no range given.", param="Range", code="invalid_range"
        )
    if any(not 0 <= start < size for start, _ in ranges):
        raise RangeNotSatisfiable(
            f"Range not satisfiable: the file has {size} bytes (0 to {size - 1}).",
            param="Range",
        )
    if any(start >= end for start, end in ranges):
        raise InvalidRequest(
            "Invalid Range header: a range's start must come before its end.",
            param="Range",
            code="invalid_range",
        )
    return [ByteRange(start, end - 1) for start, end in _merged(ranges)]


def _parse(spec: str, size: int) -> list[tuple[int, int]]:
    """``(start, end exclusive)`` per part; parts that are not numbers are skipped, as
    ``FileResponse`` skips them."""
    ranges = []
    for part in (part.strip() for part in spec.split(",")):
        if not part or part == "-" or "-" not in part:
            continue
        first, _, last = (text.strip() for text in part.partition("-"))
        try:
            start = int(first) if first else max(size - int(last), 0)
            end = int(last) + 1 if first and last and int(last) < size else size
        except ValueError:
            continue
        ranges.append((start, end))
    return ranges


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    if len(ranges) == 1:
        return ranges
    merged = [min(ranges)]
    for start, end in sorted(ranges)[1:]:
        last_start, last_end = merged[-1]
        if start <= last_end:
            merged[-1] = (last_start, max(last_end, end))
        else:
            merged.append((start, end))
    return merged
