"""Model directories on disk: Hugging Face layout, safetensors only, with a sha256 manifest.

A model directory is written to a temporary sibling, every file and the directory fsynced, and
swapped into place with one atomic rename, so readers see either the old directory or the
complete new one, also after a crash. ``manifest.json`` lists every file's sha256 and size;
``load_model`` checks it before any weights are read, so a corrupted file is reported, not used.

An epoch checkpoint also carries the optimizer's state (``training_state.safetensors`` and its
JSON index ``training_state.json``, both in the manifest), so a resumed fine-tune continues
exactly where it stopped. Everything is safetensors or JSON: nothing here is ever unpickled.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

from contracts.manifest import (
    MANIFEST,
    CorruptCheckpointError,
    SavedModel,
    describe,
    file_sha256,
    read_metadata,
    verify,
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
    "read_metadata",
    "save_model",
    "verify",
]

TRAINING_STATE = "training_state.safetensors"
TRAINING_STATE_INDEX = "training_state.json"


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
        if training_state is not None:
            _save_training_state(training_state, staging)
        files = {
            item.name: {"sha256": file_sha256(item), "size": item.stat().st_size}
            for item in sorted(staging.iterdir())
            if item.is_file()
        }
        manifest = {"files": files, "metadata": metadata or {}}
        manifest_path = staging / MANIFEST
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
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


def has_training_state(path: Path) -> bool:
    return (path / TRAINING_STATE).is_file() and (path / TRAINING_STATE_INDEX).is_file()


def load_training_state(path: Path) -> TrainingState:
    """The optimizer state saved with a checkpoint; call ``verify(path)`` first."""
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
