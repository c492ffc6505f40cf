"""One job as the worker runs it: read from the database once, then the pipeline's settings."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from contracts.safety import AUTO_PATCH, DEFAULT_STRATEGY, DRIFT_THRESHOLD, PatchStrategy
from workers.ml.config import PipelineConfig

# What "auto" resolves to; recorded on the job when it starts, as OpenAI shows resolved values.
AUTO_HYPERPARAMETERS: dict[str, Any] = {
    "n_epochs": 3,
    "batch_size": 8,
    "learning_rate_multiplier": 1.0,
}


@dataclass(frozen=True)
class JobSpec:
    """Everything the pipeline needs, read from the database once."""

    job_id: str
    tenant_id: str
    base: str
    train: Path
    validation: Path | None
    hyperparameters: dict[str, Any]
    seed: int
    safety: dict[str, Any]  # the job's safety settings as the customer gave them
    finetuned_name: str

    @property
    def patched_name(self) -> str:
        return f"{self.finetuned_name}:patched"

    @property
    def strategy(self) -> PatchStrategy:
        return PatchStrategy(self.safety.get("strategy", DEFAULT_STRATEGY))

    @property
    def drift_threshold(self) -> float:
        return float(self.safety.get("asr_threshold", DRIFT_THRESHOLD))

    @property
    def auto_patch(self) -> bool:
        return bool(self.safety.get("auto_patch", AUTO_PATCH))

    def checkpoint_name(self, step: int) -> str:
        return f"{self.finetuned_name}:ckpt-step-{step}"

    def total_steps(self, n_examples: int) -> int:
        """Optimizer steps of the fine-tune: one per batch, every epoch."""
        batches = math.ceil(n_examples / self.hyperparameters["batch_size"])
        return int(batches * self.hyperparameters["n_epochs"])

    def pipeline_config(
        self, *, judge: str | None = None, extra_judges: tuple[str, ...] = ()
    ) -> PipelineConfig:
        """The pipeline's settings for this job; ``judge`` None keeps the pipeline's default."""
        config = PipelineConfig(
            base=self.base,
            train=self.train,
            validation=self.validation,
            n_epochs=self.hyperparameters["n_epochs"],
            batch_size=self.hyperparameters["batch_size"],
            learning_rate_multiplier=self.hyperparameters["learning_rate_multiplier"],
            seed=self.seed,
            strategy=self.strategy,
            drift_threshold=self.drift_threshold,
            auto_patch=self.auto_patch,
            extra_judges=extra_judges,
        )
        return replace(config, judge=judge) if judge else config
