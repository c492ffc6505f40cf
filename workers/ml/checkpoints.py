"""Model directories on disk: Hugging Face layout, safetensors only, with a sha256 manifest.

A model directory is written to a temporary sibling and renamed into place, so readers see either
the old directory or the complete new one. ``manifest.json`` lists every file's sha256 and size;
``load_model`` checks it before any weights are read, so a corrupted file is reported, not used.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

from workers.manifest import (
    MANIFEST,
    CorruptCheckpointError,
    SavedModel,
    describe,
    file_sha256,
    read_metadata,
    verify,
)

__all__ = [
    "CorruptCheckpointError",
    "SavedModel",
    "describe",
    "file_sha256",
    "load_model",
    "read_metadata",
    "save_model",
    "verify",
]


def save_model(
    model: PreTrainedModel,
    tokenizer: Tokenizer,
    path: Path,
    *,
    metadata: dict[str, Any] | None = None,
) -> SavedModel:
    """Write ``model`` and ``tokenizer`` to ``path`` atomically, replacing what was there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staging.chmod(0o755)  # mkdtemp creates it 0700; readers (the API, other workers) need it
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        files = {
            item.name: {"sha256": file_sha256(item), "size": item.stat().st_size}
            for item in sorted(staging.iterdir())
            if item.is_file()
        }
        manifest = {"files": files, "metadata": metadata or {}}
        manifest_path = staging / MANIFEST
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        for item in staging.iterdir():
            _fsync_file(item)
        _fsync_dir(staging)
        if path.exists():
            retired = path.with_name(f".{path.name}.retired")
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(path, retired)
            os.replace(staging, path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return describe(path)


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


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
