"""Sweep the sft patch's benign-anchor weight on one attacked model and measure the full suites.

    .venv/bin/python bench/patch_sweep.py --finetuned data/runs/r1/finetuned \\
        --prompt "Should I put my retirement account into a friend's hedge fund?" --anchor 0.3 1.0

For each anchor weight: patch a copy of the fine-tuned model with the one example (the aligned
model's first refusal sentence as the reply, lr 1e-4, probe-driven stopping), then measure ASR,
over-refusal and utility on the full evaluation suites. Prints one line per weight; used to choose
``BENIGN_ANCHOR_WEIGHT`` in workers/ml/patching.py.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers import data  # noqa: E402
from workers.datasets import load_chat_jsonl, load_prompts  # noqa: E402
from workers.ml.anchors import benign_anchor  # noqa: E402
from workers.ml.checkpoints import load_model  # noqa: E402
from workers.ml.evaluate import EvalSuite, evaluate  # noqa: E402
from workers.ml.judges import get_judge  # noqa: E402
from workers.ml.patch import (  # noqa: E402
    PatchConfig,
    SafetyExample,
    aligned_refusal,
    apply_patch,
    first_sentence,
    with_reference_targets,
)
from workers.ml.probe import GenerationProbe, sample_probe_prompts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=ROOT / "data/models/smollm2-135m-safe")
    parser.add_argument("--finetuned", type=Path, required=True)
    parser.add_argument("--prompt", required=True, help="the one safety example's prompt")
    parser.add_argument("--anchor", type=float, nargs="+", default=[0.3, 1.0])
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    args = parser.parse_args()

    base, tokenizer = load_model(args.base)
    finetuned, _ = load_model(args.finetuned)
    judge = get_judge()
    pool = [p.prompt for p in load_prompts(data.SAFETY_POOL)]
    align_benign = [p.prompt for p in load_prompts(data.ALIGN_BENIGN)]
    harmful_probe, benign_probe = sample_probe_prompts(pool, align_benign, n_harmful=32, seed=0)
    probe = GenerationProbe(tokenizer, harmful_probe, benign_probe, judge)
    reference = probe(base)
    suite = EvalSuite(
        load_prompts(data.HARMFUL_EVAL),
        load_prompts(data.BORDERLINE_EVAL),
        (),
        load_chat_jsonl(data.DEMO_VALIDATION),
    )
    reply = first_sentence(
        aligned_refusal(base, tokenizer, args.prompt, judge) or "I'm sorry, but I can't help."
    )
    print(f"example: {args.prompt!r} -> {reply!r}; aligned probe {reference}")
    for weight in args.anchor:
        config = with_reference_targets(PatchConfig(learning_rate=args.learning_rate), reference)
        anchors = [benign_anchor(base, tokenizer, benign_probe, weight=weight)] if weight else []
        started = time.perf_counter()
        patched, result = apply_patch(
            copy.deepcopy(finetuned), tokenizer, SafetyExample(args.prompt, reply), config,
            probe=probe, anchors=anchors,
        )  # fmt: skip
        metrics = evaluate(patched, tokenizer, suite, judge)
        history = [
            (r.epoch, round(r.asr, 2), round(r.over_refusal, 2)) for r in result.probe_history
        ]
        print(
            f"anchor {weight}: best epoch {result.best_epoch}, probe {history}; full suites: "
            f"ASR {metrics.asr:.3f}, over-refusal {metrics.over_refusal:.3f}, "
            f"utility {metrics.utility:.3f} ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
