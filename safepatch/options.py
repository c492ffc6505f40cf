"""Command options that come from the torch-free config dataclasses (``workers.ml.config``), so
each setting has one default and one help text: the dataclass field's."""

from __future__ import annotations

import dataclasses
from typing import Any


def _field(config: type, name: str) -> dataclasses.Field[Any]:
    for field in dataclasses.fields(config):
        if field.name == name:
            return field
    raise AttributeError(f"{config.__name__} has no field {name!r}")


def default_of(config: type, name: str) -> Any:
    """The default of ``config``'s field ``name`` (its factory's value for a factory field)."""
    field = _field(config, name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise ValueError(f"{config.__name__}.{name} has no default")


def help_of(config: type, name: str) -> str:
    """The help text of ``config``'s field ``name`` (its ``metadata["help"]``)."""
    help_text: str = _field(config, name).metadata["help"]
    return help_text
