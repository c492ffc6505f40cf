"""How often each refusal judge agrees with the labelled judge set, with 95% intervals.

    python -m bench.judge_agreement [--guard-dir PATH] [--out docs/judge-agreement.md]

The set (workers/data/judge/) labels each (prompt, reply) pair ``refusal`` (no attempt at the
request) or ``compliance``. For every judge it prints accuracy, the false-refusal rate (a
compliance called a refusal: ASR read too low) and the false-compliance rate (a refusal called a
compliance), each with its n and Wilson interval, on the dev part and, apart, on the holdout part
that no judge was tuned on; then accuracy by reply shape. Disagreements are listed for the dev part
only, so reading this report never tunes a judge to the holdout.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from workers import data
from workers.ml.judges import Judge, get_judge
from workers.ml.metrics import wilson_interval
from workers.ml.reply_judge import read_reply

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "judge-agreement.md"


@dataclass(frozen=True)
class Item:
    id: str
    kind: str  # harmful | benign
    shape: str
    prompt: str
    reply: str
    refusal: bool  # the label


@dataclass(frozen=True)
class Rate:
    k: int
    n: int

    def __str__(self) -> str:
        if self.n == 0:
            return "n/a (n=0)"
        low, high = wilson_interval(self.k, self.n)
        return f"{self.k / self.n:.3f} [{low:.3f}, {high:.3f}] (n={self.n})"


@dataclass(frozen=True)
class Agreement:
    accuracy: Rate
    false_refusal: Rate  # of the compliance items, called refusal
    false_compliance: Rate  # of the refusal items, called compliance


def load_items(path: Path) -> list[Item]:
    items = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if record["label"] not in ("refusal", "compliance"):
            raise ValueError(f"{path.name}:{number}: label must be refusal or compliance")
        items.append(
            Item(
                id=record["id"],
                kind=record["kind"],
                shape=record["shape"],
                prompt=record["prompt"],
                reply=record["reply"],
                refusal=record["label"] == "refusal",
            )
        )
    return items


def agreement(items: list[Item], verdicts: list[bool]) -> Agreement:
    pairs = list(zip(items, verdicts, strict=True))
    compliance = [verdict for item, verdict in pairs if not item.refusal]
    refusal = [verdict for item, verdict in pairs if item.refusal]
    return Agreement(
        accuracy=Rate(sum(item.refusal == verdict for item, verdict in pairs), len(pairs)),
        false_refusal=Rate(sum(compliance), len(compliance)),
        false_compliance=Rate(sum(not verdict for verdict in refusal), len(refusal)),
    )


def by_shape(items: list[Item], verdicts: list[bool]) -> dict[str, Rate]:
    hits: dict[str, list[bool]] = defaultdict(list)
    for item, verdict in zip(items, verdicts, strict=True):
        hits[f"{item.kind}/{item.shape}"].append(item.refusal == verdict)
    return {shape: Rate(sum(flags), len(flags)) for shape, flags in sorted(hits.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guard-dir", type=Path, help="also measure a local guard classifier")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    parts = {"dev": load_items(data.JUDGE_DEV), "holdout": load_items(data.JUDGE_HOLDOUT)}
    judges: list[Judge] = [get_judge("reply"), get_judge("keyword")]
    if args.guard_dir is not None:
        from workers.ml.guard_judge import guard_judge_from_dir

        judges.append(guard_judge_from_dir(args.guard_dir))

    lines = [
        "# Judge agreement",
        "",
        "Written by `python -m bench.judge_agreement`; every figure below is from its last run.",
        "Labels: `refusal` = the reply makes no attempt at the request (docs/judging.md).",
        "Rates are shares with their 95% Wilson interval and n. False refusal: a compliance the",
        "judge called a refusal (ASR read too low); false compliance: a refusal called a",
        "compliance. The holdout part was never read while the judges were written.",
        "",
        "| judge | part | accuracy | false refusal | false compliance | seconds |",
        "|---|---|---|---|---|---|",
    ]
    shapes: dict[str, dict[str, dict[str, Rate]]] = {}
    disagreements: dict[str, list[str]] = {}
    for judge in judges:
        shapes[judge.name] = {}
        for part, items in parts.items():
            started = time.perf_counter()
            verdicts = judge.refused([i.prompt for i in items], [i.reply for i in items])
            seconds = time.perf_counter() - started
            result = agreement(items, verdicts)
            lines.append(
                f"| {judge.name} | {part} | {result.accuracy} | {result.false_refusal} "
                f"| {result.false_compliance} | {seconds:.2f} |"
            )
            shapes[judge.name][part] = by_shape(items, verdicts)
            if part == "dev":
                disagreements[judge.name] = [
                    _disagreement(item, verdict)
                    for item, verdict in zip(items, verdicts, strict=True)
                    if item.refusal != verdict
                ]

    lines += ["", "## Accuracy by reply shape", ""]
    names = [judge.name for judge in judges]
    lines.append("| shape | " + " | ".join(f"{n} dev | {n} holdout" for n in names) + " |")
    lines.append("|---" * (1 + 2 * len(names)) + "|")
    all_shapes = sorted({s for judge in shapes.values() for p in judge.values() for s in p})
    for shape in all_shapes:
        cells = []
        for name in names:
            for part in parts:
                rate = shapes[name][part].get(shape)
                cells.append(f"{rate.k}/{rate.n}" if rate else "-")
        lines.append(f"| {shape} | " + " | ".join(cells) + " |")

    for name, rows in disagreements.items():
        lines += ["", f"## Dev disagreements: {name} ({len(rows)})", ""]
        lines += rows or ["none"]

    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


def _disagreement(item: Item, verdict: bool) -> str:
    said = "refusal" if verdict else "compliance"
    label = "refusal" if item.refusal else "compliance"
    reply = item.reply.replace("\n", " ").replace("|", "/")
    rule = read_reply(item.prompt, item.reply).rule
    return (
        f"- `{item.id}` {item.kind}/{item.shape}: label {label}, judged {said} "
        f"(whole-reply rule: {rule}): {reply[:140]!r}"
    )


if __name__ == "__main__":
    main()
