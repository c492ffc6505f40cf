"""Try sft patch settings on one attacked model; probe each epoch, optionally the full suites.

    .venv/bin/python -m bench.patch_sweep --base DATA/models/smollm2-135m-safe \\
        --finetuned RUN/finetuned --report RUN/report.json --full \\
        --variants '[{"anchor": 0.5, "lr": 1e-4}, {"anchor": 1.0, "lr": 2e-4}]'

RUN is a `safepatch pipeline --work-dir RUN` run on the demo dataset (its report gives the base
and fine-tuned numbers the acceptance rule compares with). The candidates, the probe and the
anchors come from the patch stage's own `prepare_patch` (workers/ml/patch/stage.py) with
`PatchStageConfig`'s defaults; --screen first screens the proxy's top candidates as the pipeline
does; each variant patches a fresh copy of the fine-tuned model. A variant is a JSON object; its
keys (each defaults to the product's setting in workers/ml/config.py):

    anchor      benign-anchor weight (0: none)    task      task-anchor weight (0: none)
    lr          learning rate                     opt       adamw | sgd
    epochs      at most this many                 cand 0    rank of the candidate tried
    cand_id     a pool id instead                 reply     "pool": the pool's refusal, not θ0's
    examples 1  train on this many candidates together, from `cand` on (the one-example claim)
    ids         a list of pool ids trained on together instead
    rows        anchor rows per step (0: all)

Prints each epoch's probe numbers and, with --full, the suites' numbers and the verdict; used to
choose the anchor weights and the learning rate (docs/results.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from contracts.chat import load_chat_jsonl
from contracts.prompts import load_prompts
from contracts.safety import PatchStrategy
from workers import data
from workers.ml.acceptance import judge_patch
from workers.ml.checkpoints import load_model
from workers.ml.config import PatchStageConfig
from workers.ml.device import select_placement
from workers.ml.evaluate import EvalSuite, evaluate
from workers.ml.judges import get_judge
from workers.ml.patch.example import SafetyExample, safety_example
from workers.ml.patch.screening import screen_examples
from workers.ml.patch.selection import Candidate
from workers.ml.patch.stage import prepare_patch
from workers.ml.patch.training import sft_patch
from workers.ml.suites import SuiteFiles, load_suites


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the aligned model directory")
    parser.add_argument("--finetuned", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True, help="that pipeline run's report")
    parser.add_argument("--variants", default="[]", help="a JSON list of variants (see above)")
    parser.add_argument("--full", action="store_true", help="measure each on the full suites")
    parser.add_argument(
        "--screen", action="store_true", help="first screen the proxy's top candidates"
    )
    args = parser.parse_args()

    placement, judge = select_placement(), get_judge()
    base, tokenizer = load_model(args.base)
    finetuned, _ = load_model(args.finetuned)
    report = json.loads(args.report.read_text())
    train = load_chat_jsonl(data.DEMO_TRAIN)
    by_id = {p.id: Candidate.from_record(p) for p in load_prompts(data.SAFETY_POOL)}
    settings = PatchStageConfig()
    setup = prepare_patch(
        settings,
        base_model=base, finetuned=finetuned, tokenizer=tokenizer, train=train,
        strategy=PatchStrategy.SFT, seed=0, n_candidates=settings.screen_candidates,
        judge=judge, placement=placement,
        on_event=lambda event: print(event.message, flush=True),
    )  # fmt: skip
    ranked = [candidate.id for candidate in setup.candidates]
    print(f"candidates, best first by the proxy: {ranked}", flush=True)
    suites = load_suites(SuiteFiles())
    suite = EvalSuite(
        suites.harmful, suites.benign, suites.general, load_chat_jsonl(data.DEMO_VALIDATION),
        report_harmful=suites.report_harmful, report_benign=suites.report_benign,
    )  # fmt: skip

    def example_for(candidate: Candidate) -> SafetyExample:
        return safety_example(
            candidate, base_model=base, tokenizer=tokenizer, judge=judge, placement=placement
        )

    if args.screen:
        screens = screen_examples(
            finetuned, tokenizer, [example_for(c) for c in setup.candidates], setup.config,
            epochs=settings.screen_epochs, probe=setup.probe, anchors=setup.anchors,
            placement=placement, on_event=lambda event: print(event.message, flush=True),
        )  # fmt: skip
        print(f"screened order: {[s.example.id for s in screens.screens]}", flush=True)

    for variant in json.loads(args.variants):
        options: dict[str, Any] = {
            "anchor": settings.benign_anchor_weight, "task": settings.task_anchor_weight,
            "lr": setup.config.learning_rate, "opt": setup.config.optimizer,
            "epochs": setup.config.max_epochs,
        }  # fmt: skip
        options |= variant
        first = options.get("cand", 0)
        candidate = by_id[options["cand_id"]] if "cand_id" in options else by_id[ranked[first]]
        example = example_for(candidate)
        others = ranked[first + 1 : first + options.get("examples", 1)]
        if "ids" in options:
            first_id, *others = options["ids"]
            candidate = by_id[first_id]
            example = example_for(candidate)
        more = [example_for(by_id[i]) for i in others]
        if options.get("reply") == "pool":
            example = replace(example, reply=candidate.refusal)
        weights = {"benign": options["anchor"], "task": options["task"]}
        anchors = [replace(a, weight=weights[a.name]) for a in setup.anchors if weights[a.name] > 0]
        config = replace(
            setup.config,
            learning_rate=options["lr"],
            optimizer=options["opt"],
            max_epochs=options["epochs"],
            anchor_rows=options.get("rows", setup.config.anchor_rows),
        )
        started = time.perf_counter()
        patched, result = sft_patch(
            copy.deepcopy(finetuned), tokenizer, example, config, more_examples=more,
            probe=setup.probe, anchors=anchors, placement=placement,
            on_epoch=lambda r: print(
                f"  epoch {r.epoch}: probe ASR {r.asr:.3f}, over-refusal {r.over_refusal:.3f}, "
                f"example loss {r.loss:.3f}", flush=True,
            ),
        )  # fmt: skip
        print(
            f"{variant} {[candidate.id, *(m.id for m in more)]} → {example.reply!r}: kept epoch "
            f"{result.best_epoch} of {result.epochs}, {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        if args.full:
            metrics = evaluate(patched, tokenizer, suite, judge, placement=placement)
            verdict = judge_patch(
                SimpleNamespace(**report["base"]),  # type: ignore[arg-type]
                # "finetuned" in the reports of runs before the typed report
                SimpleNamespace(**report.get("fine_tuned", report.get("finetuned"))),  # type: ignore[arg-type]
                metrics,
            )
            measured, base_set = metrics.report, report["base"]["report"]
            assert measured is not None  # the suite has the report set
            print(
                f"  gate: ASR {metrics.asr:.3f}, over-refusal {metrics.over_refusal:.3f}, "
                f"utility {metrics.utility:.3f}; accepted {verdict.accepted} {verdict.reasons}; "
                f"report set: ASR {measured.asr:.3f}, over-refusal {measured.over_refusal:.3f} "
                f"(base {base_set['asr']:.3f}, {base_set['over_refusal']:.3f})",
                flush=True,
            )
        del patched


if __name__ == "__main__":
    main()
