"""The one text form of an audit payload: what is stored, and exactly what is hashed.

A record's hash used to be computed over the payload as it was in memory, while the database
kept its own idea of it: PostgreSQL's JSONB stores numbers as ``numeric``, so ``-0.0`` came back
as ``0.0`` and ``1e308`` as an integer of 309 digits, and the record no longer matched its own
hash. Now the payload is turned once into canonical JSON text, stored verbatim in a text column
(``payload_canonical``) and hashed as those very characters. The JSON column (``payload``) is a
queryable copy; verification checks that it still says the same thing.

Canonical: keys sorted, no whitespace, ASCII only (``\\uXXXX`` escapes), so the bytes do not
depend on key order, on the database's text encoding or on a driver. Before that, values a JSON
reader could not give back exactly are normalised or refused:

- ``-0.0`` becomes ``0.0`` (JSON and ``numeric`` have no negative zero);
- NaN and infinities are refused (not JSON);
- strings with a lone surrogate or a NUL are refused (not valid Unicode; PostgreSQL refuses
  ``\\u0000`` in JSONB and in text);
- keys must be strings, and only dicts, lists, strings, numbers, booleans and null are allowed.

Strings are not Unicode-normalised: NFC and NFD spellings are different strings that a customer
may have sent on purpose, and with ASCII escapes each is stored exactly as hashed. Integers of
any size are kept: the text is the record, and the JSON copy is compared by numeric value.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

from app.core.errors import InvalidRequest


class UnrecordableValue(InvalidRequest):
    """A payload value the audit trail cannot store exactly; the request changes nothing."""

    code = "invalid_value"


def dumps(payload: dict[str, Any]) -> str:
    """The canonical JSON text of ``payload`` (normalised first; see the module's docstring)."""
    return _encode(_normalise(payload, "payload"))


def _encode(value: Any) -> str:
    # The same options as the hash has always used (sort_keys, separators, ASCII): records
    # written before the text column existed hash to the same value from their backfilled text.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def legacy_dumps(payload: Any) -> str:
    """The text the hash of a record written before ``payload_canonical`` existed was computed
    over (the migration backfills it): the old encoder, without normalising anything."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


def _normalise(value: Any, path: str) -> Any:
    if value is None or isinstance(value, bool | str | int):
        if isinstance(value, str):
            _check_string(value, path)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnrecordableValue(
                f"{_name(path)} is {value}, which is not a JSON number.", param=_param(path)
            )
        return 0.0 if value == 0 else value  # -0.0 == 0: both become 0.0
    if isinstance(value, dict):
        normalised = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"audit payload key {key!r} at {path} is not a string")
            _check_string(key, path)
            normalised[key] = _normalise(item, f"{path}.{key}")
        return normalised
    if isinstance(value, list | tuple):
        return [_normalise(item, f"{path}[{index}]") for index, item in enumerate(value)]
    raise TypeError(f"audit payload value at {path} is a {type(value).__name__}, not JSON")


def _check_string(value: str, path: str) -> None:
    if "\x00" in value:
        raise UnrecordableValue(f"{_name(path)} contains a NUL character.", param=_param(path))
    for char in value:
        if "\ud800" <= char <= "\udfff":
            raise UnrecordableValue(
                f"{_name(path)} contains a lone surrogate (U+{ord(char):04X}), "
                "which is not valid Unicode.",
                param=_param(path),
            )


def _param(path: str) -> str | None:
    """The request parameter a payload path names (payloads of requests mirror their bodies)."""
    return path.removeprefix("payload.") if path != "payload" else None


def _name(path: str) -> str:
    param = _param(path)
    return f"'{param}'" if param is not None else "The audit payload"


def same_value(stored: Any, canonical: str) -> bool:
    """Whether the JSON column's ``stored`` value says what the ``canonical`` text says.

    Numbers compare by exact decimal value, since JSONB gives ``1e+308`` back as an integer and
    ``1.50`` as ``1.5``; everything else compares as is, booleans apart from numbers (so a changed
    type, key or string is a difference)."""
    parsed = json.loads(canonical, parse_float=Decimal, parse_int=Decimal)
    return _tagged(stored) == _tagged(parsed)


def _tagged(value: Any) -> Any:
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | Decimal):
        return ("number", Decimal(value))
    if isinstance(value, float):
        # repr is the shortest text that reads back as this float: what json.dumps writes.
        return ("number", Decimal(repr(value))) if math.isfinite(value) else ("float", value)
    if isinstance(value, dict):
        return {key: _tagged(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_tagged(item) for item in value]
    return value
