"""The default patch strategy's peak memory, component by component, for models of other sizes.

    .venv/bin/python -m bench.memory_model [--measured-gib 5.6]

It models what the code holds at the patch stage's peak, a screening step (workers/ml/patch/):
the aligned model θ0 and the fine-tuned model θ* (kept for fresh attempts and CER), the best
screened run so far (its weights and AdamW moments: the first attempt goes on from it), and the
run being screened during its step (weights, gradients, AdamW moments), plus the anchors' teacher
log-probabilities and one micro-batch's activations. Weights are held in fp32 with bf16 autocast
(workers/ml/device.py: a patch's updates are below bf16's resolution), so "in bf16" here means
bf16 compute, the precision the code runs large models in. The activation figure is an estimate
(the tensors a bf16-autocast decoder layer saves for its backward pass); ``bench/pipeline.py``
prints it next to the peak it measured at 135M.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from workers.ml.config import PatchConfig

GIB = 2**30
GPU_BYTES = 80e9  # one 80 GB GPU
RUNTIME_BYTES = 1 * GIB  # the framework, tokenizer and data; a CUDA context is about half that


@dataclass(frozen=True)
class Architecture:
    """A decoder-only transformer's shape (the published configs)."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool

    @property
    def parameters(self) -> int:
        head_dim = self.hidden // self.heads
        attention = self.hidden * head_dim * (2 * self.heads + 2 * self.kv_heads)
        mlp = 3 * self.hidden * self.intermediate
        norms = 2 * self.hidden
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * (attention + mlp + norms) + embeddings + self.hidden

    def saved_bytes_per_token(self) -> int:
        """Activations one decoder layer keeps for backward under bf16 autocast, per token: the
        fp32 inputs of both norms, the bf16 inputs of the projections, q/k/v and the attention
        output, and the MLP's gate, up and product."""
        kv = self.kv_heads * (self.hidden // self.heads)
        return 4 * 2 * self.hidden + 2 * (4 * self.hidden + 2 * kv) + 2 * 4 * self.intermediate


SMOLLM2_135M = Architecture("SmolLM2-135M", 576, 1536, 30, 9, 3, 49152, tied=True)
LLAMA_32_1B = Architecture("Llama-3.2-1B", 2048, 8192, 16, 32, 8, 128256, tied=True)
LLAMA_2_7B = Architecture("Llama-2-7B", 4096, 11008, 32, 32, 32, 32000, tied=False)
LLAMA_31_8B = Architecture("Llama-3.1-8B", 4096, 14336, 32, 32, 8, 128256, tied=False)
ARCHITECTURES = (SMOLLM2_135M, LLAMA_32_1B, LLAMA_2_7B, LLAMA_31_8B)


@dataclass(frozen=True)
class Workload:
    """The demo patch's sizes (per step; the anchors' positions are counted once)."""

    micro_batch: int = PatchConfig().micro_batch
    tokens_per_row: int = 160  # a padded anchor row: system prompt, request, reply
    labelled_per_row: int = 40  # the assistant positions the KL or the loss reads
    teacher_positions: int = 2600  # benign anchor (48 x 16) + task anchor (~40 conversations)


def components(arch: Architecture, work: Workload = Workload()) -> dict[str, float]:
    p = arch.parameters
    fp32 = 4 * p
    rows = work.micro_batch
    activations = rows * work.tokens_per_row * arch.layers * arch.saved_bytes_per_token()
    # bf16 logits, their fp32 log-softmax and its gradient, at the labelled positions
    logits = rows * work.labelled_per_row * arch.vocab * (2 + 4 + 4)
    return {
        "aligned θ0 weights": fp32,
        "fine-tuned θ* weights": fp32,
        "best screened run: weights + AdamW": fp32 + 2 * fp32,
        "screened run: weights + gradients + AdamW": 4 * fp32,
        "anchor teacher log-probabilities": work.teacher_positions * arch.vocab * 4,
        "activations (one micro-batch)": activations + logits,
        "runtime": RUNTIME_BYTES,
    }


def report(measured_gib: float | None = None) -> str:
    names = list(components(SMOLLM2_135M))
    header = "| component | " + " | ".join(a.name for a in ARCHITECTURES) + " |"
    rows = [header, "|---" * (len(ARCHITECTURES) + 1) + "|"]
    rows.append(
        "| parameters | " + " | ".join(f"{a.parameters / 1e9:.2f} B" for a in ARCHITECTURES) + " |"
    )
    tables = [components(a) for a in ARCHITECTURES]
    for name in names:
        rows.append(f"| {name} | " + " | ".join(f"{t[name] / GIB:.1f}" for t in tables) + " |")
    totals = [sum(t.values()) for t in tables]
    rows.append("| **peak (GiB)** | " + " | ".join(f"**{t / GIB:.1f}**" for t in totals) + " |")
    rows.append(
        "| fits one 80 GB GPU | "
        + " | ".join("yes" if t <= GPU_BYTES else "**no**" for t in totals)
        + " |"
    )
    text = "\n".join(rows)
    if measured_gib is not None:
        modelled = totals[0] / GIB
        text += (
            f"\n\nAt 135M the model gives {modelled:.1f} GiB; the patch phase measured "
            f"{measured_gib:.1f} GiB peak resident memory ({measured_gib / modelled:.2f}x)."
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measured-gib", type=float, help="the patch phase's measured peak")
    args = parser.parse_args()
    print(report(args.measured_gib))


if __name__ == "__main__":
    main()
