"""Model directories: atomic, safetensors only, and a corrupted file is caught before loading."""

from __future__ import annotations

import json

import pytest
import torch

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
