"""Progress of the offline commands on stderr: a bar for training steps, a line for the rest."""

from __future__ import annotations

import sys

from workers.ml.events import (
    GenerationProgress,
    PatchVerified,
    PipelineEvent,
    StageEvaluated,
    TrainingStep,
)


class StepBar:
    """A tqdm bar for training steps; every other piece of news is one line above it."""

    def __init__(self, description: str) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bar = tqdm(desc=description, unit="step", file=sys.stderr, leave=False)

    def __enter__(self) -> StepBar:
        return self

    def __exit__(self, *_: object) -> None:
        self._bar.close()

    def step(self, report: object) -> None:
        self._bar.update(1)
        self._bar.set_postfix(loss=f"{getattr(report, 'loss', 0.0):.4f}")

    def note(self, message: str) -> None:
        self._tqdm.write(message, file=sys.stderr)

    def event(self, event: PipelineEvent) -> None:
        match event:
            case TrainingStep(loss=loss, epoch=epoch):
                self._bar.update(1)
                self._bar.set_postfix(loss=f"{loss:.4f}", epoch=epoch)
            case StageEvaluated() | PatchVerified():  # a model's numbers (and the verdict)
                self.note(event.message)
            case GenerationProgress():
                pass  # many per suite; they keep a job's lease alive, not a person informed
            case _:
                self.note(event.message)
