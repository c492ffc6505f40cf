"""Align the raw model with the default recipe and measure it on the suites after chosen epochs.

    .venv/bin/python -m bench.align_epochs --source DATA/models/smollm2-135m-instruct \\
        --out /tmp/align --epochs 3 --eval-epochs 2,3

The same code as `safepatch models align` (workers/ml/align.py, AlignConfig's defaults but for
--epochs), with the aligned model measured on the full suites and saved after each epoch in
--eval-epochs: how AlignConfig's epoch count was chosen (docs/results.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from contracts.prompts import load_prompts
from workers import data
from workers.ml import checkpoints
from workers.ml.align import align
from workers.ml.config import AlignConfig
from workers.ml.evaluate import EvalSuite, evaluate
from workers.ml.judges import get_judge
from workers.ml.suites import SuiteFiles, load_suites

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="the raw model directory")
    parser.add_argument("--out", type=Path, required=True, help="where epoch-N models go")
    parser.add_argument("--epochs", type=int, default=AlignConfig.n_epochs)
    parser.add_argument("--eval-epochs", default="", help="comma-separated; default: the last")
    parser.add_argument("--answer-cache", type=Path, help="the raw model's answers (JSON)")
    args = parser.parse_args()

    model, tokenizer = checkpoints.load_model(args.source)
    suites = load_suites(SuiteFiles())
    judge = get_judge()
    measured = {int(e) for e in args.eval_epochs.split(",") if e} or {args.epochs}
    started = time.perf_counter()

    def on_epoch_end(epoch: int, epoch_model: object) -> None:
        print(f"epoch {epoch} trained at {time.perf_counter() - started:.0f} s", flush=True)
        if epoch not in measured:
            return
        metrics = evaluate(
            epoch_model,  # type: ignore[arg-type]
            tokenizer,
            EvalSuite(suites.harmful, suites.benign, suites.general),
            judge,
        )
        print(
            f"epoch {epoch}: ASR {metrics.asr:.3f}, over-refusal {metrics.over_refusal:.3f}, "
            f"general accuracy {metrics.general_accuracy:.3f} ({metrics.seconds:.0f} s)",
            flush=True,
        )
        checkpoints.save_model(
            epoch_model,  # type: ignore[arg-type]
            tokenizer,
            args.out / f"epoch-{epoch}",
            metadata={"baseline": metrics.summary()},
        )

    _, result = align(
        model,
        tokenizer,
        load_prompts(data.ALIGN_HARMFUL),
        load_prompts(data.ALIGN_BENIGN),
        AlignConfig(n_epochs=args.epochs),
        on_epoch_end=on_epoch_end,
        on_phase=lambda message: print(message, flush=True),
        answer_cache=args.answer_cache,
    )
    print(
        f"{result.n_refusals} refusals + {result.n_benign} own answers; answers "
        f"{result.answer_seconds:.0f} s, training {result.training.seconds:.0f} s, "
        f"{result.training.steps} steps"
    )


if __name__ == "__main__":
    main()
