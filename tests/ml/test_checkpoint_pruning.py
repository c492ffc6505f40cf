"""Only the last two epoch checkpoints keep the optimizer state (AdamW's: twice the weights);
older ones keep their weights, with the manifest, sha256 and size the job recorded for them, and
a run still resumes exactly from the latest."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from contracts.manifest import describe
from tests.ml.test_resume import Crash, _examples, _weights, small_run  # noqa: F401  (a fixture)
from tests.tiny_models import build_tiny_model
from workers.ml import checkpoints
from workers.ml.events import FineTuneEpochEnded, PipelineEvent
from workers.ml.finetune import FineTuneConfig, TrainingState, fine_tune
from workers.ml.pipeline import run_pipeline

STATE_FILES = {checkpoints.TRAINING_STATE, checkpoints.TRAINING_STATE_INDEX}


def _names(path: Path) -> set[str]:
    return {item.name for item in path.iterdir()}


def test_older_checkpoints_lose_only_their_optimizer_state(tmp_path, small_run) -> None:  # noqa: F811
    config, models_dir = small_run
    config.n_epochs = 4
    work_dir = tmp_path / "work"
    recorded: dict[int, tuple[str, int]] = {}

    def record(event: PipelineEvent) -> None:
        # What the job records as the checkpoint's model version when its epoch ends.
        if isinstance(event, FineTuneEpochEnded):
            saved = describe(work_dir / "checkpoints" / f"epoch-{event.epoch}")
            recorded[event.epoch] = (saved.sha256, saved.size_bytes)

    run_pipeline(config, models_dir=models_dir, work_dir=work_dir, on_event=record)

    for epoch in (1, 2, 3, 4):
        path = work_dir / "checkpoints" / f"epoch-{epoch}"
        kept = epoch >= 3
        assert checkpoints.has_training_state(path) is kept, epoch
        assert (_names(path) >= STATE_FILES) is kept, epoch
        saved = checkpoints.verify(path)  # the weights, whole
        assert (saved.sha256, saved.size_bytes) == recorded[epoch], epoch
    # The optimizer state is not part of what the API lists for a checkpoint.
    listed = describe(work_dir / "checkpoints" / "epoch-4")
    state_bytes = sum(
        (work_dir / "checkpoints" / "epoch-4" / n).stat().st_size for n in STATE_FILES
    )
    assert state_bytes > 0 and listed.size_bytes == recorded[4][1]


def test_a_run_resumes_exactly_after_older_states_were_pruned(tmp_path, small_run) -> None:  # noqa: F811
    config, models_dir = small_run
    config.n_epochs = 4
    reference = run_pipeline(config, models_dir=models_dir, work_dir=tmp_path / "reference")

    def die_after_epoch_3(event: PipelineEvent) -> None:
        if isinstance(event, FineTuneEpochEnded) and event.epoch == 3:
            raise Crash

    work_dir = tmp_path / "work"
    with pytest.raises(Crash):
        run_pipeline(config, models_dir=models_dir, work_dir=work_dir, on_event=die_after_epoch_3)
    assert not checkpoints.has_training_state(work_dir / "checkpoints" / "epoch-1")

    events: list[PipelineEvent] = []
    resumed = run_pipeline(
        config, models_dir=models_dir, work_dir=work_dir, on_event=events.append, resume=True
    )

    assert "resuming fine-tuning from the epoch 3 checkpoint (step 6)" in [
        event.message for event in events
    ]
    expected, got = _weights(reference.finetuned_path), _weights(resumed.finetuned_path)
    assert all(torch.equal(expected[name], got[name]) for name in expected)


def test_a_half_pruned_or_corrupted_state_is_never_loaded(tmp_path, tokenizer) -> None:
    state = TrainingState()
    model = fine_tune(
        build_tiny_model(len(tokenizer)),
        _examples(tokenizer),
        FineTuneConfig(n_epochs=1, batch_size=3),
        pad_token_id=tokenizer.pad_token_id,
        state=state,
    )[0]
    path = tmp_path / "epoch-1"
    checkpoints.save_model(model, tokenizer, path, training_state=state)
    weights = describe(path)

    index = path / checkpoints.TRAINING_STATE_INDEX
    index.write_text(index.read_text().replace('"epoch": 1', '"epoch": 9'))
    with pytest.raises(checkpoints.CorruptCheckpointError, match=r"training_state\.json"):
        checkpoints.load_training_state(path)

    # A prune that died after removing the state's manifest: the files left are not counted.
    (path / checkpoints.TRAINING_MANIFEST).unlink()
    assert not checkpoints.has_training_state(path)
    checkpoints.prune_training_state(path)
    assert not (STATE_FILES & _names(path))
    assert describe(path) == weights
