"""Remember the weights of the best epoch so far, and put them back at the end.

Both the alignment (align.py) and the patch (patch/training.py) train for a few epochs, read a
probe after each, and keep the epoch the probe liked best, which need not be the last.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel


class BestWeights:
    """The best-ranked epoch offered so far (smallest rank; the latest one on ties) and a copy of
    its weights (540 MB for 135M parameters in fp32, taken only when the best changes)."""

    def __init__(self) -> None:
        self.rank: Any = None
        self.epoch: int | None = None
        self.snapshot: dict[str, torch.Tensor] | None = None

    def offer(self, epoch: int, rank: Any, model: PreTrainedModel) -> None:
        if self.rank is None or rank <= self.rank:
            self.rank, self.epoch = rank, epoch
            self.snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def restore(self, model: PreTrainedModel, last_epoch: int) -> int:
        """Load the best epoch's weights into ``model`` (trained to ``last_epoch``); return the
        epoch whose weights it now holds."""
        if self.epoch is None or self.snapshot is None:
            return last_epoch
        if self.epoch != last_epoch:
            model.load_state_dict(self.snapshot)
        self.snapshot = None
        return self.epoch
