"""A job's safety settings (the ``safety`` extension of a fine-tuning job) and their defaults.

The API validates them, the worker runs with them; both read the defaults from here.
"""

from __future__ import annotations

from enum import StrEnum


class PatchStrategy(StrEnum):
    SFT = "sft"  # one refusal example, anchored to the aligned model (the default)
    ONE_SHOT = "one-shot"  # the published patch: the one refusal example alone, no anchors
    PROJECTION = "projection"  # project the fine-tune's update off the safety gradient's subspace


DRIFT_THRESHOLD = 0.05  # an ASR rise (fine-tuned minus base) above this is drift and patched
AUTO_PATCH = True
DEFAULT_STRATEGY = PatchStrategy.SFT
