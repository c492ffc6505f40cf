"""Model directories: atomic, safetensors only, and a corrupted file is caught before loading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from contracts.manifest import entries, file_sha256
from workers.ml import checkpoints
from workers.ml.base_models import BaseModelError, register
from workers.ml.checkpoints import CorruptCheckpointError, load_model, save_model, verify


def test_round_trip_keeps_the_weights(tmp_path, tokenizer, tiny_model) -> None:
    saved = save_model(tiny_model, tokenizer, tmp_path / "m", metadata={"kind": "test"})
    loaded, loaded_tokenizer = load_model(saved.path)

    assert {p.name for p in saved.path.iterdir()} >= {"model.safetensors", "manifest.json"}
    assert not any(p.suffix in (".bin", ".pt") for p in saved.path.iterdir())
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert json.loads((saved.path / "manifest.json").read_text())["metadata"] == {"kind": "test"}


def test_a_flipped_byte_is_reported_not_loaded(tmp_path, tokenizer, tiny_model) -> None:
    saved = save_model(tiny_model, tokenizer, tmp_path / "m")
    weights = saved.path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))

    with pytest.raises(CorruptCheckpointError, match=r"model\.safetensors"):
        load_model(saved.path)


def test_saving_again_replaces_the_directory_whole(tmp_path, tokenizer, tiny_model) -> None:
    first = save_model(tiny_model, tokenizer, tmp_path / "m")
    with torch.no_grad():
        next(tiny_model.parameters()).add_(1.0)
    second = save_model(tiny_model, tokenizer, tmp_path / "m")

    assert first.sha256 != second.sha256
    assert verify(tmp_path / "m").sha256 == second.sha256
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging leftovers


def _fd_path(descriptor: int) -> Path:
    return Path(os.readlink(f"/proc/self/fd/{descriptor}"))


def test_a_write_is_staged_beside_fsynced_and_swapped_in(
    tmp_path, tokenizer, tiny_model, monkeypatch
) -> None:
    """Temporary directory in the same parent; every file and the directory fsynced; one
    rename (an atomic exchange when replacing); then the parent fsynced."""
    log: list[tuple[str, Path, Path | None]] = []
    real_fsync, real_replace = os.fsync, os.replace
    real_exchange = checkpoints._replace_directory

    def fsync(descriptor: int) -> None:
        log.append(("fsync", _fd_path(descriptor), None))
        real_fsync(descriptor)

    def replace(src, dst) -> None:
        log.append(("rename", Path(src), Path(dst)))
        real_replace(src, dst)

    def exchange(staging: Path, path: Path) -> None:
        log.append(("exchange", staging, path))
        real_exchange(staging, path)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(checkpoints, "_replace_directory", exchange)
    target = tmp_path / "models" / "m"

    for swap in ("rename", "exchange"):  # a new directory, then replacing it
        log.clear()
        saved = save_model(tiny_model, tokenizer, target)
        swaps = [entry for entry in log if entry[0] in ("rename", "exchange")]
        assert [entry[0] for entry in swaps] == [swap]
        _, staging, final = swaps[0]
        assert final == target and staging.parent == target.parent
        assert staging.name.startswith(".m.")
        synced_before = {path for kind, path, _ in log[: log.index(swaps[0])] if kind == "fsync"}
        files = {staging / item.name for item in saved.path.iterdir()}
        assert files | {staging} <= synced_before
        assert log[-1] == ("fsync", target.parent, None)
        assert sorted(p.name for p in target.parent.iterdir()) == ["m"]
        # Readable by the API, which may run as another user.
        assert {item.stat().st_mode & 0o777 for item in saved.path.iterdir()} == {0o644}


def test_replacing_exchanges_the_directories_in_one_step(tmp_path) -> None:
    staging, path = tmp_path / ".m.new", tmp_path / "m"
    for directory, content in ((staging, "new"), (path, "old")):
        directory.mkdir()
        (directory / "weights").write_text(content)
    inode = staging.stat().st_ino

    checkpoints._replace_directory(staging, path)

    assert (path / "weights").read_text() == "new" and path.stat().st_ino == inode
    assert (staging / "weights").read_text() == "old"  # for the caller to delete


def test_without_renameat2_replacing_still_works(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(checkpoints, "_libc", object())
    staging, path = tmp_path / ".m.new", tmp_path / "m"
    for directory, content in ((staging, "new"), (path, "old")):
        directory.mkdir()
        (directory / "weights").write_text(content)

    checkpoints._replace_directory(staging, path)

    assert (path / "weights").read_text() == "new"
    assert (staging / "weights").read_text() == "old"


class FailingTokenizer:
    """Writes part of its files, then the disk fills up."""

    def save_pretrained(self, directory) -> None:
        (Path(directory) / "tokenizer.json").write_text('{"trunc')
        raise OSError(28, "No space left on device")


def test_a_failed_write_leaves_the_old_directory_whole(tmp_path, tokenizer, tiny_model) -> None:
    before = save_model(tiny_model, tokenizer, tmp_path / "m")

    with pytest.raises(OSError, match="No space left"):
        save_model(tiny_model, FailingTokenizer(), tmp_path / "m")  # type: ignore[arg-type]

    assert verify(tmp_path / "m").sha256 == before.sha256
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # the staging directory is gone


@pytest.mark.parametrize("name", ["pytorch_model.bin", "optimizer.pt", "rng_state.pth"])
def test_pickle_files_are_refused_listed_or_not(tmp_path, tokenizer, tiny_model, name) -> None:
    saved = save_model(tiny_model, tokenizer, tmp_path / "m")
    (saved.path / name).write_bytes(b"\x80\x04K\x01.")  # a pickle

    with pytest.raises(CorruptCheckpointError, match="pickle"):
        load_model(saved.path)

    # Listed in the manifest with its correct hash: still refused, by the API's listing too.
    manifest = json.loads((saved.path / "manifest.json").read_text())
    manifest["files"][name] = {
        "sha256": file_sha256(saved.path / name),
        "size": (saved.path / name).stat().st_size,
    }
    (saved.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptCheckpointError, match="pickle"):
        verify(saved.path)
    with pytest.raises(CorruptCheckpointError, match="pickle"):
        entries(saved.path)


def test_registering_a_model_with_only_pickle_weights_is_refused(
    tmp_path, tokenizer, tiny_model
) -> None:
    source = tmp_path / "hf-model"  # the layout of an old Hugging Face checkpoint
    tiny_model.config.save_pretrained(source)
    torch.save(tiny_model.state_dict(), source / "pytorch_model.bin")
    tokenizer.save_pretrained(source)

    with pytest.raises(BaseModelError, match="no safetensors weights"):
        register("pickled", source, tmp_path / "models")
    assert not (tmp_path / "models" / "pickled").exists()
