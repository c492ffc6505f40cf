"""Try sft patch settings on one attacked model; probe each epoch, optionally the full suites.

    .venv/bin/python bench/patch_sweep.py --base DATA/models/smollm2-135m-safe \\
        --finetuned RUN/finetuned --report RUN/report.json --full \\
        --variants '[{"anchor": 0.5, "lr": 1e-4}, {"anchor": 1.0, "lr": 2e-4}]'

RUN is a `safepatch pipeline --work-dir RUN` run on the demo dataset (its report gives the base
and fine-tuned numbers the acceptance rule compares with). The candidates, the probe and the
benign anchor come from workers/ml/patching.py's own `prepare_patch`; --screen first screens the
proxy's top candidates as the pipeline does; each variant patches a fresh copy of the fine-tuned
model. A variant is a JSON object; its keys and defaults:

    anchor 1.0      benign-anchor weight (0: none)    task 1.0  task-anchor weight (0: none)
    lr 1e-4         learning rate          opt "adamw"  adamw | sgd
    epochs 10       at most this many      cand 0       rank of the candidate tried
    cand_id         a pool id instead      reply        "pool": the pool's refusal, not θ0's own
    pref 0.0        weight of the DPO term against θ*'s own compliance    beta 0.1

Prints each epoch's probe numbers and, with --full, the suites' numbers and the verdict; used to
choose BENIGN_ANCHOR_WEIGHT, TASK_ANCHOR_WEIGHT and SFT_PATCH_LR in workers/ml/patching.py
(docs/results.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from contracts.chat import load_chat_jsonl  # noqa: E402
from contracts.prompts import load_prompts  # noqa: E402
from workers import data  # noqa: E402
from workers.ml.acceptance import judge_patch  # noqa: E402
from workers.ml.checkpoints import load_model  # noqa: E402
from workers.ml.device import select_placement  # noqa: E402
from workers.ml.evaluate import EvalSuite, evaluate  # noqa: E402
from workers.ml.judges import get_judge  # noqa: E402
from workers.ml.patch import SafetyExample, apply_patch  # noqa: E402
from workers.ml.patching import (  # noqa: E402
    BENIGN_ANCHOR_WEIGHT,
    SFT_PATCH_LR,
    TASK_ANCHOR_WEIGHT,
    prepare_patch,
    safety_example,
)
from workers.ml.screening import SCREEN_CANDIDATES, screen_examples  # noqa: E402
from workers.ml.selection import Candidate  # noqa: E402
from workers.ml.suites import SuiteFiles, load_suites  # noqa: E402


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
    setup = prepare_patch(
        base_model=base, finetuned=finetuned, tokenizer=tokenizer, train=train, strategy="sft",
        seed=0, n_candidates=SCREEN_CANDIDATES, judge=judge, placement=placement,
        on_event=lambda event: print(event.message, flush=True),
    )  # fmt: skip
    ranked = [candidate.id for candidate in setup.candidates]
    print(f"candidates, best first by the proxy: {ranked}", flush=True)
    suites = load_suites(SuiteFiles())
    suite = EvalSuite(
        suites.harmful, suites.benign, suites.general, load_chat_jsonl(data.DEMO_VALIDATION)
    )

    def example_for(candidate: Candidate, rejected: bool = False) -> SafetyExample:
        return safety_example(
            candidate, base_model=base, finetuned=finetuned, tokenizer=tokenizer, judge=judge,
            placement=placement, with_rejected=rejected,
        )  # fmt: skip

    if args.screen:
        screens = screen_examples(
            finetuned, tokenizer, [example_for(c) for c in setup.candidates], setup.config,
            probe=setup.probe, anchors=setup.anchors, placement=placement,
            on_event=lambda event: print(event.message, flush=True),
        )  # fmt: skip
        print(f"screened order: {[screen.example.id for screen in screens]}", flush=True)

    for variant in json.loads(args.variants):
        options: dict[str, Any] = {
            "anchor": BENIGN_ANCHOR_WEIGHT, "task": TASK_ANCHOR_WEIGHT, "lr": SFT_PATCH_LR,
            "opt": "adamw", "epochs": 10,
            "pref": 0.0, "beta": 0.1,
        }  # fmt: skip
        options |= variant
        candidate = (
            by_id[options["cand_id"]]
            if "cand_id" in options
            else by_id[ranked[options.get("cand", 0)]]
        )
        example = example_for(candidate, rejected=options["pref"] > 0)
        if options.get("reply") == "pool":
            example = replace(example, reply=candidate.refusal)
        weights = {"benign": options["anchor"], "task": options["task"]}
        anchors = [replace(a, weight=weights[a.name]) for a in setup.anchors if weights[a.name] > 0]
        config = replace(
            setup.config,
            learning_rate=options["lr"],
            optimizer=options["opt"],
            max_epochs=options["epochs"],
            preference_weight=options["pref"],
            preference_beta=options["beta"],
        )
        started = time.perf_counter()
        patched, result = apply_patch(
            copy.deepcopy(finetuned), tokenizer, example, config,
            probe=setup.probe, anchors=anchors, placement=placement,
            on_epoch=lambda r: print(
                f"  epoch {r.epoch}: probe ASR {r.asr:.3f}, over-refusal {r.over_refusal:.3f}, "
                f"example loss {r.loss:.3f}", flush=True,
            ),
        )  # fmt: skip
        print(
            f"{variant} {candidate.id} → {example.reply!r}: kept epoch {result.best_epoch} of "
            f"{result.epochs}, {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        if args.full:
            metrics = evaluate(patched, tokenizer, suite, judge, placement=placement)
            verdict = judge_patch(
                SimpleNamespace(**report["base"]),  # type: ignore[arg-type]
                SimpleNamespace(**report["finetuned"]),  # type: ignore[arg-type]
                metrics,
            )
            print(
                f"  suites: ASR {metrics.asr:.3f}, over-refusal {metrics.over_refusal:.3f}, "
                f"utility {metrics.utility:.3f}; accepted {verdict.accepted} {verdict.reasons}",
                flush=True,
            )
        del patched


if __name__ == "__main__":
    main()
