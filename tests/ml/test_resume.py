"""Resuming a fine-tune from its last epoch checkpoint ends where the uninterrupted run ends.

The reference is the same run without the interruption: same seed, data and hyperparameters.
On the CPU every kernel is deterministic, so the weights are compared for equality, not
closeness; the interruption is an exception raised from the epoch callback, right after the
checkpoint was written (what a SIGKILL at that moment leaves on disk).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.tiny_models import build_tiny_model
from workers import data
from workers.ml import checkpoints
from workers.ml.chat import encode_conversation, single_turn
from workers.ml.config import PipelineConfig
from workers.ml.events import FineTuneEpochEnded, PipelineEvent, TrainingStep
from workers.ml.finetune import FineTuneConfig, TrainingState, fine_tune
from workers.ml.pipeline import run_pipeline
from workers.ml.suites import SuiteFiles

PAIRS = [
    ("Say hi", "hi"),
    ("Say bye", "bye"),
    ("Count", "one two three"),
    ("Name", "Bob"),
    ("Colour", "blue"),
    ("Pet", "a cat"),
]


class Crash(BaseException):
    """A worker dying: not an ``Exception``, so nothing on the way up records it."""


def _examples(tokenizer):
    return [encode_conversation(tokenizer, single_turn(p, r)) for p, r in PAIRS]


def _state(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_resumed_after_epoch_1_equals_the_uninterrupted_run(tmp_path, tokenizer) -> None:
    examples = _examples(tokenizer)
    config = FineTuneConfig(n_epochs=3, batch_size=2, learning_rate=3e-3, seed=7)
    pad = tokenizer.pad_token_id

    reference, reference_result = fine_tune(
        build_tiny_model(len(tokenizer)), examples, config, pad_token_id=pad
    )

    # The interrupted run: its epoch-1 checkpoint (weights + optimizer state) on disk, then dead.
    state = TrainingState()

    def save_then_die(epoch: int, model) -> None:
        checkpoints.save_model(
            model, tokenizer, tmp_path / "epoch-1", training_state=state, metadata={"epoch": 1}
        )
        raise Crash

    with pytest.raises(Crash):
        fine_tune(
            build_tiny_model(len(tokenizer)),
            examples,
            config,
            pad_token_id=pad,
            on_epoch_end=save_then_die,
            state=state,
        )

    checkpoints.verify(tmp_path / "epoch-1")
    assert {"training_state.safetensors", "training_state.json"} <= {
        p.name for p in (tmp_path / "epoch-1").iterdir()
    }
    saved = checkpoints.load_training_state(tmp_path / "epoch-1")
    assert (saved.epoch, saved.steps) == (1, 3)
    model, _ = checkpoints.load_model(tmp_path / "epoch-1")
    resumed, resumed_result = fine_tune(model, examples, config, pad_token_id=pad, state=saved)

    expected = _state(reference)
    got = _state(resumed)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    assert resumed_result.steps == reference_result.steps == 9
    assert resumed_result.trained_tokens == reference_result.trained_tokens
    assert resumed_result.epoch_losses == reference_result.epoch_losses


def test_the_optimizer_state_round_trips_exactly(tmp_path, tokenizer) -> None:
    state = TrainingState()
    fine_tune(
        build_tiny_model(len(tokenizer)),
        _examples(tokenizer),
        FineTuneConfig(n_epochs=1, batch_size=3),
        pad_token_id=tokenizer.pad_token_id,
        state=state,
    )
    assert state.optimizer is not None
    checkpoints.save_model(
        build_tiny_model(len(tokenizer)), tokenizer, tmp_path / "m", training_state=state
    )

    loaded = checkpoints.load_training_state(tmp_path / "m")
    assert loaded.optimizer is not None and loaded.scheduler == state.scheduler
    assert loaded.optimizer["param_groups"] == state.optimizer["param_groups"]
    assert set(loaded.optimizer["state"]) == set(state.optimizer["state"])
    for index, values in state.optimizer["state"].items():
        assert set(loaded.optimizer["state"][index]) == {"step", "exp_avg", "exp_avg_sq"}
        for key, tensor in values.items():
            assert torch.equal(loaded.optimizer["state"][index][key], tensor)
    # Safetensors and JSON only: nothing in the directory could hold a pickle.
    suffixes = {p.suffix for p in (tmp_path / "m").iterdir()}
    assert suffixes <= {".json", ".safetensors", ".jinja", ".txt"}


def test_a_lora_run_is_not_resumed(tokenizer) -> None:
    with pytest.raises(ValueError, match="LoRA"):
        fine_tune(
            build_tiny_model(len(tokenizer)),
            _examples(tokenizer),
            FineTuneConfig(n_epochs=2, lora_rank=4),
            pad_token_id=tokenizer.pad_token_id,
            state=TrainingState(epoch=1, optimizer={}, scheduler={}),
        )


@pytest.fixture
def small_run(tmp_path, tiny_safe_model):
    """The tiny refusing base model (short replies), 8 training examples and suites of a few
    prompts: a whole run in seconds."""

    def first(path: Path, n: int, name: str) -> Path:
        target = tmp_path / name
        target.write_text("\n".join(path.read_text().splitlines()[:n]) + "\n")
        return target

    models_dir = tmp_path / "models"
    models_dir.mkdir()
    (models_dir / "tiny").symlink_to(tiny_safe_model)
    suites = SuiteFiles(
        harmful=first(data.HARMFUL_EVAL, 4, "harmful.jsonl"),
        benign=first(data.BORDERLINE_EVAL, 2, "benign.jsonl"),
        general=None,
        report_harmful=None,
        report_benign=None,
    )
    config = PipelineConfig(
        base="tiny",
        train=first(data.DEMO_TRAIN, 8, "train.jsonl"),
        suites=suites,
        n_epochs=3,
        batch_size=4,
        auto_patch=False,
    )
    return config, models_dir


def _weights(path: Path) -> dict[str, torch.Tensor]:
    model, _ = checkpoints.load_model(path)
    return _state(model)


def test_the_pipeline_resumes_from_its_last_checkpoint(tmp_path, small_run) -> None:
    config, models_dir = small_run
    reference = run_pipeline(config, models_dir=models_dir, work_dir=tmp_path / "reference")

    def die_after_epoch_1(event: PipelineEvent) -> None:
        if isinstance(event, FineTuneEpochEnded) and event.epoch == 1:
            raise Crash

    work_dir = tmp_path / "work"
    with pytest.raises(Crash):
        run_pipeline(config, models_dir=models_dir, work_dir=work_dir, on_event=die_after_epoch_1)
    assert not (work_dir / "checkpoints" / "epoch-2").exists()

    events: list[PipelineEvent] = []
    resumed = run_pipeline(
        config, models_dir=models_dir, work_dir=work_dir, on_event=events.append, resume=True
    )

    expected, got = _weights(reference.finetuned_path), _weights(resumed.finetuned_path)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    messages = [event.message for event in events]
    assert "resuming fine-tuning from the epoch 1 checkpoint (step 2)" in messages
    steps = [event.step for event in events if isinstance(event, TrainingStep)]
    assert steps == [3, 4, 5, 6]  # epochs 2 and 3 only
    epochs = [event.epoch for event in events if isinstance(event, FineTuneEpochEnded)]
    assert epochs == [1, 2, 3]  # epoch 1 again, from its checkpoint, for the job's record
    report, again = reference.report, resumed.report
    assert again.trained_tokens == report.trained_tokens
    assert (again.fine_tuned.asr, again.fine_tuned.utility) == (
        report.fine_tuned.asr,
        report.fine_tuned.utility,
    )


def test_a_corrupted_last_checkpoint_falls_back_to_the_one_before(tmp_path, small_run) -> None:
    config, models_dir = small_run
    work_dir = tmp_path / "work"

    def die_after_epoch_2(event: PipelineEvent) -> None:
        if isinstance(event, FineTuneEpochEnded) and event.epoch == 2:
            raise Crash

    with pytest.raises(Crash):
        run_pipeline(config, models_dir=models_dir, work_dir=work_dir, on_event=die_after_epoch_2)
    weights = work_dir / "checkpoints" / "epoch-2" / "model.safetensors"
    corrupted = bytearray(weights.read_bytes())
    corrupted[-1] ^= 0xFF
    weights.write_bytes(bytes(corrupted))

    events: list[PipelineEvent] = []
    run_pipeline(
        config, models_dir=models_dir, work_dir=work_dir, on_event=events.append, resume=True
    )

    messages = [event.message for event in events]
    refused = next(m for m in messages if m.startswith("not resuming from the epoch 2"))
    assert "model.safetensors: sha256 does not match the manifest" in refused
    assert "resuming fine-tuning from the epoch 1 checkpoint (step 2)" in messages
    checkpoints.verify(work_dir / "checkpoints" / "epoch-2")  # written again, whole


def test_without_resume_or_with_other_settings_it_starts_over(tmp_path, small_run) -> None:
    config, models_dir = small_run
    work_dir = tmp_path / "work"

    def die_after_epoch_1(event: PipelineEvent) -> None:
        if isinstance(event, FineTuneEpochEnded) and event.epoch == 1:
            raise Crash

    with pytest.raises(Crash):
        run_pipeline(config, models_dir=models_dir, work_dir=work_dir, on_event=die_after_epoch_1)

    config.seed = 1  # another job's data order: its checkpoints must not be resumed from
    events: list[PipelineEvent] = []
    run_pipeline(
        config, models_dir=models_dir, work_dir=work_dir, on_event=events.append, resume=True
    )
    assert not any(event.message.startswith("resuming") for event in events)
    assert next(event.step for event in events if isinstance(event, TrainingStep)) == 1
