"""Model directories' manifests, torch-free: the API checks and serves files with them.

``manifest.json`` lists every file of a model directory with its sha256 and size; the sha256 of
the manifest itself is the model's one identity (its ETag and its ``sha256`` in the API).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
CHUNK = 1 << 20
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")


class CorruptCheckpointError(RuntimeError):
    """A model directory's files do not match its manifest."""


@dataclass(frozen=True)
class SavedModel:
    path: Path
    sha256: str  # digest of the manifest: one id for the whole directory
    size_bytes: int


@dataclass(frozen=True)
class ManifestEntry:
    name: str
    sha256: str
    size: int


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CorruptCheckpointError(f"{path}: no {MANIFEST}; not a safepatch model directory")
    manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    return manifest


def entries(path: Path) -> list[ManifestEntry]:
    """The directory's files as the manifest lists them (the manifest itself excluded).

    A manifest that lists pickle weights is refused: nothing of ours writes one, and loading,
    evaluating or serving a pickle would run whatever code it carries.
    """
    files: dict[str, dict[str, Any]] = read_manifest(path)["files"]
    pickles = sorted(name for name in files if name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise CorruptCheckpointError(f"{path}: lists pickle files ({', '.join(pickles)})")
    return [ManifestEntry(name, item["sha256"], item["size"]) for name, item in files.items()]


def describe(path: Path) -> SavedModel:
    manifest_path = path / MANIFEST
    size = sum(entry.size for entry in entries(path)) + manifest_path.stat().st_size
    return SavedModel(path=path, sha256=file_sha256(manifest_path), size_bytes=size)


def verify_file(path: Path, entry: ManifestEntry) -> None:
    """One file against its manifest entry; raise ``CorruptCheckpointError`` on a mismatch."""
    item = path / entry.name
    if not item.is_file():
        raise CorruptCheckpointError(f"{item}: listed in the manifest but missing")
    if item.stat().st_size != entry.size or file_sha256(item) != entry.sha256:
        raise CorruptCheckpointError(f"{item}: sha256 does not match the manifest")


def verify(path: Path) -> SavedModel:
    """Check every file against the manifest; raise ``CorruptCheckpointError`` on a mismatch."""
    listed = entries(path)
    for entry in listed:
        verify_file(path, entry)
    names = {entry.name for entry in listed}
    unexpected = {item.name for item in path.iterdir() if item.is_file()} - names - {MANIFEST}
    pickles = sorted(name for name in unexpected if name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise CorruptCheckpointError(
            f"{path}: pickle files present ({', '.join(pickles)}); only safetensors are loaded"
        )
    return describe(path)


def read_metadata(path: Path) -> dict[str, Any]:
    metadata: dict[str, Any] = read_manifest(path).get("metadata", {})
    return metadata
