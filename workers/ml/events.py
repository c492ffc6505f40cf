"""Progress events the pipeline emits: the CLI draws them, the Celery worker stores them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PipelineEvent:
    type: str  # stage | step | generation | metrics | epoch | patch | info
    message: str
    data: dict[str, Any] = field(default_factory=dict)


EventSink = Callable[[PipelineEvent], None]


def ignore(_: PipelineEvent) -> None:
    """The default sink."""
