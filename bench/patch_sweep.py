"""Try sft patch settings on one attacked model; probe each epoch, optionally the full suites.

    .venv/bin/python bench/patch_sweep.py --base DATA/models/smollm2-135m-safe \\
        --finetuned RUN/finetuned --report RUN/report.json --full \\
        --variants '[{"anchor": 0.5, "lr": 1e-4}, {"anchor": 1.0, "lr": 2e-4}]'

RUN is a `safepatch pipeline --work-dir RUN` run on the demo dataset (its report gives the base
and fine-tuned numbers the acceptance rule compares with). The candidates are ranked once by the
pipeline's own selection rule (cached next to the report), the probe and the benign anchor are
built exactly as workers/ml/patching.py builds them, and each variant patches a fresh copy of the
fine-tuned model. A variant is a JSON object; its keys and defaults:

    anchor 1.0      benign-anchor weight (0: no anchor)
    lr 1e-4         learning rate          opt "adamw"  adamw | sgd
    epochs 10       at most this many      cand 0       rank of the candidate tried
    cand_id         a pool id instead      reply        "pool": the pool's refusal, not θ0's own

Prints each epoch's probe numbers and, with --full, the suites' numbers and the verdict; used to
choose BENIGN_ANCHOR_WEIGHT and SFT_PATCH_LR in workers/ml/patching.py (docs/results.md).
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

from workers import data  # noqa: E402
from workers.datasets import load_chat_jsonl, load_prompts  # noqa: E402
from workers.ml.acceptance import judge_patch  # noqa: E402
from workers.ml.anchors import Anchor, benign_anchor  # noqa: E402
from workers.ml.checkpoints import load_model  # noqa: E402
from workers.ml.device import select_placement  # noqa: E402
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
from workers.ml.patching import PROBE_HARMFUL, _benign_task  # noqa: E402
from workers.ml.probe import GenerationProbe, sample_probe_prompts, split_by_kind  # noqa: E402
from workers.ml.selection import Candidate, select_examples  # noqa: E402
from workers.ml.suites import SuiteFiles, load_suites, user_prompts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the aligned model directory")
    parser.add_argument("--finetuned", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True, help="that pipeline run's report")
    parser.add_argument("--variants", required=True, help="a JSON list of variants (see above)")
    parser.add_argument("--full", action="store_true", help="measure each on the full suites")
    args = parser.parse_args()

    placement, judge = select_placement(), get_judge()
    base, tokenizer = load_model(args.base)
    finetuned, _ = load_model(args.finetuned)
    report = json.loads(args.report.read_text())
    train = load_chat_jsonl(data.DEMO_TRAIN)
    pool = [Candidate.from_record(p) for p in load_prompts(data.SAFETY_POOL)]
    by_id = {candidate.id: candidate for candidate in pool}
    customer = sorted(user_prompts(train))
    anchor_prompts, benign_probe_pool = split_by_kind(load_prompts(data.PATCH_BENIGN), seed=0)

    ranked_path = args.report.with_name("ranked-candidates.json")
    if not ranked_path.is_file():
        selection = select_examples(
            finetuned, tokenizer, pool,
            customer_prompts=customer,
            task_conversations=_benign_task(base, tokenizer, train, judge, placement),
            benign_prompts=anchor_prompts, reference_model=base, placement=placement,
        )  # fmt: skip
        ranked_path.write_text(json.dumps([s.candidate.id for s in selection.ranked[:10]]))
    ranked = json.loads(ranked_path.read_text())
    print(f"candidates, best first: {ranked}", flush=True)

    shortlist = [by_id[i] for i in ranked[:3]]
    harmful_probe, benign_probe = sample_probe_prompts(
        [c.prompt for c in pool], benign_probe_pool,
        exclude=[*customer, *(c.prompt for c in shortlist)],
        n_harmful=PROBE_HARMFUL, n_benign=len(benign_probe_pool), seed=0,
    )  # fmt: skip
    probe = GenerationProbe(tokenizer, harmful_probe, benign_probe, judge, placement=placement)
    reference = probe(base)
    print(
        f"probe, aligned base: ASR {reference.asr:.3f}, over-refusal {reference.over_refusal:.3f}"
    )
    suites = load_suites(SuiteFiles())
    suite = EvalSuite(
        suites.harmful, suites.benign, suites.general, load_chat_jsonl(data.DEMO_VALIDATION)
    )
    anchor: Anchor | None = None

    for variant in json.loads(args.variants):
        options: dict[str, Any] = {"anchor": 1.0, "lr": 1e-4, "opt": "adamw", "epochs": 10}
        options |= variant
        candidate = (
            by_id[options["cand_id"]]
            if "cand_id" in options
            else by_id[ranked[options.get("cand", 0)]]
        )
        reply = candidate.refusal
        if options.get("reply") != "pool":
            own = aligned_refusal(base, tokenizer, candidate.prompt, judge, placement=placement)
            reply = first_sentence(own or candidate.refusal)
        example = SafetyExample(prompt=candidate.prompt, reply=reply, id=candidate.id)
        anchors = []
        if options["anchor"] > 0:
            anchor = anchor or benign_anchor(base, tokenizer, anchor_prompts, placement=placement)
            anchors = [replace(anchor, weight=options["anchor"])]
        config = with_reference_targets(
            PatchConfig(
                learning_rate=options["lr"], optimizer=options["opt"], max_epochs=options["epochs"]
            ),
            reference,
        )
        started = time.perf_counter()
        patched, result = apply_patch(
            copy.deepcopy(finetuned), tokenizer, example, config,
            probe=probe, anchors=anchors, placement=placement,
            on_epoch=lambda r: print(
                f"  epoch {r.epoch}: probe ASR {r.asr:.3f}, over-refusal {r.over_refusal:.3f}, "
                f"example loss {r.loss:.3f}", flush=True,
            ),
        )  # fmt: skip
        print(
            f"{variant} {candidate.id} → {reply!r}: kept epoch {result.best_epoch} of "
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
