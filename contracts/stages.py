"""The models a job evaluates, spelled one way everywhere: API, worker, demo and report."""

from __future__ import annotations

from enum import StrEnum


class EvalStage(StrEnum):
    BASE = "base"  # the provider's aligned model the customer fine-tunes
    FINE_TUNED = "fine_tuned"  # the customer's fine-tuned model
    PATCHED = "patched"  # the fine-tuned model after the safety patch

    @property
    def label(self) -> str:
        return {"base": "Base model", "fine_tuned": "Fine-tuned model", "patched": "Patched model"}[
            self.value
        ]
