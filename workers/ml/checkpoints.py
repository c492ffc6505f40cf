"""Model directories on disk: Hugging Face layout, safetensors only, with a sha256 manifest.

A model directory is written to a temporary sibling and renamed into place, so readers see either
the old directory or the complete new one. ``manifest.json`` lists every file's sha256 and size;
``load_model`` checks it before any weights are read, so a corrupted file is reported, not used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

MANIFEST = "manifest.json"
CHUNK = 1 << 20


class CorruptCheckpointError(RuntimeError):
    """A model directory's files do not match its manifest."""


@dataclass(frozen=True)
class SavedModel:
    path: Path
    sha256: str  # digest of the manifest: one id for the whole directory
    size_bytes: int


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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


def describe(path: Path) -> SavedModel:
    manifest_path = path / MANIFEST
    files = json.loads(manifest_path.read_text())["files"]
    size = sum(entry["size"] for entry in files.values()) + manifest_path.stat().st_size
    return SavedModel(path=path, sha256=file_sha256(manifest_path), size_bytes=size)


def verify(path: Path) -> SavedModel:
    """Check every file against the manifest; raise ``CorruptCheckpointError`` on a mismatch."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CorruptCheckpointError(f"{path}: no {MANIFEST}; not a safepatch model directory")
    files: dict[str, dict[str, Any]] = json.loads(manifest_path.read_text())["files"]
    for name, expected in files.items():
        item = path / name
        if not item.is_file():
            raise CorruptCheckpointError(f"{item}: listed in the manifest but missing")
        if item.stat().st_size != expected["size"] or file_sha256(item) != expected["sha256"]:
            raise CorruptCheckpointError(f"{item}: sha256 does not match the manifest")
    unexpected = {item.name for item in path.iterdir() if item.is_file()} - set(files) - {MANIFEST}
    if any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in unexpected):
        raise CorruptCheckpointError(f"{path}: pickle weights present; only safetensors are loaded")
    return describe(path)


def read_metadata(path: Path) -> dict[str, Any]:
    metadata: dict[str, Any] = json.loads((path / MANIFEST).read_text()).get("metadata", {})
    return metadata


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
