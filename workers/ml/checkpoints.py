"""Model directories on disk: Hugging Face layout, safetensors only, with a sha256 manifest.

A model directory is written to a temporary sibling, every file and the directory fsynced, and
swapped into place with one atomic rename, so readers see either the old directory or the
complete new one, also after a crash. ``manifest.json`` lists every file's sha256 and size;
``load_model`` checks it before any weights are read, so a corrupted file is reported, not used.

An epoch checkpoint also carries the optimizer's state (``training_state.safetensors`` and its
JSON index ``training_state.json``), so a resumed fine-tune continues exactly where it stopped.
The state has a manifest of its own (``training_state.manifest.json``), not the model's: AdamW's
state is twice the weights, only the latest checkpoints need it, and pruning it from an older one
(``prune_training_state``) must leave that checkpoint's weights, its manifest and so its sha256
and size (which the API lists) as they were. Everything is safetensors or JSON: nothing here is
ever unpickled.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

from contracts.manifest import (
    MANIFEST,
    CorruptCheckpointError,
    ManifestEntry,
    SavedModel,
    describe,
    file_sha256,
    read_metadata,
    verify,
    verify_file,
)
from workers.ml.finetune import TrainingState

__all__ = [
    "TRAINING_STATE",
    "CorruptCheckpointError",
    "SavedModel",
    "describe",
    "file_sha256",
    "has_training_state",
    "load_model",
    "load_training_state",
    "prune_training_state",
    "read_metadata",
    "save_model",
    "verify",
]

TRAINING_STATE = "training_state.safetensors"
TRAINING_STATE_INDEX = "training_state.json"
TRAINING_MANIFEST = "training_state.manifest.json"
TRAINING_FILES = (TRAINING_STATE, TRAINING_STATE_INDEX)


def save_model(
    model: PreTrainedModel,
    tokenizer: Tokenizer,
    path: Path,
    *,
    metadata: dict[str, Any] | None = None,
    training_state: TrainingState | None = None,
) -> SavedModel:
    """Write ``model`` and ``tokenizer`` (and the optimizer's ``training_state``) to ``path``
    atomically, replacing what was there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # In the same parent: the final rename must not cross a file system.
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staging.chmod(0o755)  # mkdtemp creates it 0700; readers (the API, other workers) need it
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        files = _listing(item for item in staging.iterdir() if item.is_file())
        manifest = {"files": files, "metadata": metadata or {}}
        manifest_path = staging / MANIFEST
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if training_state is not None:
            _save_training_state(training_state, staging)
            state_files = _listing(staging / name for name in TRAINING_FILES)
            (staging / TRAINING_MANIFEST).write_text(json.dumps({"files": state_files}, indent=2))
        for item in staging.iterdir():
            item.chmod(0o644)  # safetensors writes 0600; the API may run as another user
            _fsync_file(item)
        _fsync_dir(staging)
        if path.exists():
            _replace_directory(staging, path)  # staging now holds the old directory
            shutil.rmtree(staging, ignore_errors=True)
        else:
            os.replace(staging, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return describe(path)


def _listing(items: Iterable[Path]) -> dict[str, dict[str, Any]]:
    return {
        item.name: {"sha256": file_sha256(item), "size": item.stat().st_size}
        for item in sorted(items)
    }


def has_training_state(path: Path) -> bool:
    """Whether the checkpoint still carries its optimizer state (not pruned)."""
    return (path / TRAINING_MANIFEST).is_file()


def load_training_state(path: Path) -> TrainingState:
    """The optimizer state saved with a checkpoint, checked against its own manifest first
    (``CorruptCheckpointError`` on a mismatch); ``verify(path)`` checks the weights."""
    listed: dict[str, dict[str, Any]] = json.loads((path / TRAINING_MANIFEST).read_text())["files"]
    if sorted(listed) != sorted(TRAINING_FILES):
        raise CorruptCheckpointError(f"{path / TRAINING_MANIFEST}: lists {sorted(listed)}")
    for name, item in listed.items():
        verify_file(path, ManifestEntry(name, item["sha256"], item["size"]))
    index = json.loads((path / TRAINING_STATE_INDEX).read_text())
    tensors = load_file(path / TRAINING_STATE)
    optimizer_state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        _, parameter, key = name.split(".", 2)  # "state.<parameter index>.<key>"
        optimizer_state.setdefault(int(parameter), {})[key] = tensor
    for parameter, values in index["optimizer_values"].items():
        optimizer_state.setdefault(int(parameter), {}).update(values)
    groups = [
        group | {"betas": tuple(group["betas"])} if "betas" in group else group
        for group in index["optimizer_groups"]
    ]
    return TrainingState(
        epoch=index["epoch"],
        steps=index["steps"],
        trained_tokens=index["trained_tokens"],
        epoch_losses=index["epoch_losses"],
        optimizer={"state": optimizer_state, "param_groups": groups},
        scheduler=index["scheduler"],
    )


def prune_training_state(path: Path) -> None:
    """Drop a checkpoint's optimizer state, keeping its weights (and their manifest) whole.

    The state's manifest goes first: a crash part-way leaves files that nothing lists, which
    ``has_training_state`` does not count, so a half-pruned state is never loaded."""
    (path / TRAINING_MANIFEST).unlink(missing_ok=True)
    for name in TRAINING_FILES:
        (path / name).unlink(missing_ok=True)
    _fsync_dir(path)


def _save_training_state(state: TrainingState, directory: Path) -> None:
    """AdamW's per-parameter tensors (exp_avg, exp_avg_sq, step) flattened into one safetensors
    file, and everything else (groups, schedule, counters) in a small JSON index."""
    assert state.optimizer is not None and state.scheduler is not None
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, dict[str, Any]] = {}
    for parameter, entries_ in state.optimizer["state"].items():
        for key, value in entries_.items():
            if isinstance(value, torch.Tensor):
                # Copies on the CPU: safetensors needs contiguous, unshared tensors.
                tensors[f"state.{parameter}.{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                values.setdefault(str(parameter), {})[key] = value
    save_file(tensors, directory / TRAINING_STATE)
    index = {
        "epoch": state.epoch,
        "steps": state.steps,
        "trained_tokens": state.trained_tokens,
        "epoch_losses": state.epoch_losses,
        "optimizer_groups": state.optimizer["param_groups"],
        "optimizer_values": values,
        "scheduler": state.scheduler,
    }
    (directory / TRAINING_STATE_INDEX).write_text(json.dumps(index, indent=1))


def load_model(
    path: Path, *, device: torch.device | str = "cpu"
) -> tuple[PreTrainedModel, Tokenizer]:
    """Verify, then load a model directory in fp32 (autocast handles lower precision)."""
    verify(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    model.to(device)  # type: ignore[arg-type]  # transformers' .to() stub
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


# renameat2(2) with RENAME_EXCHANGE swaps two directories in one atomic step (Linux 3.15+, on
# ext4, xfs, btrfs, tmpfs, ...). Without it a directory cannot replace a non-empty one atomically.
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _replace_directory(staging: Path, path: Path) -> None:
    """Swap ``staging`` into ``path`` atomically; afterwards ``staging`` holds the old one."""
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is not None:
        done = renameat2(
            _AT_FDCWD, os.fsencode(staging), _AT_FDCWD, os.fsencode(path), _RENAME_EXCHANGE
        )
        if done == 0:
            return
        error = ctypes.get_errno()
        if error not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(error, os.strerror(error), str(path))
    # No atomic exchange here: two renames, with a moment in which ``path`` is missing (a crash
    # in it leaves the old directory at ``.<name>.retired``).
    retired = path.with_name(f".{path.name}.retired")
    shutil.rmtree(retired, ignore_errors=True)
    os.replace(path, retired)
    os.replace(staging, path)
    os.replace(retired, staging)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
