"""ASR of the base, fine-tuned and patched models under jailbreak wrappers, next to plain ASR.

    python -m bench.jailbreak_asr --report PIPELINE_REPORT_JSON [--sample 44] \
        [--out docs/jailbreak-asr.md]

Reads a report written by ``safepatch pipeline --report`` (its ``models`` block names the three
model directories), loads each model and answers the report set's harmful prompts
(workers/data/report/harmful.jsonl, which no decision reads) as written and inside each default
PyRIT wrapper (docs/jailbreaks.md). Every reply is judged against the original request. Prints and
writes a table: one row per model, one column for plain ASR and one per wrapper, each
``rate [low, high] (n)`` with the 95% Wilson interval. ``--sample N`` takes an evenly spaced N of
the 220 prompts (44: four per harm category), so a CPU run stays affordable.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from contracts.prompts import load_prompts
from workers import data
from workers.ml.checkpoints import load_model
from workers.ml.device import select_placement
from workers.ml.evaluate import REPLY_TOKENS
from workers.ml.jailbreak_eval import PLAIN, WrapperAsr, jailbreak_asr
from workers.ml.jailbreaks import DEFAULT_WRAPPERS, load_wrappers
from workers.ml.judges import DEFAULT_JUDGE, JUDGES, get_judge

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "jailbreak-asr.md"
MODELS = ("base", "fine_tuned", "patched")


@dataclass(frozen=True)
class ModelRows:
    model: str  # base | fine_tuned | patched
    path: Path | None  # None: the report has no such model (no patch was kept)
    rows: list[WrapperAsr]
    seconds: float


def model_paths(report: dict, report_path: Path) -> dict[str, Path | None]:
    """The report's model directories; a relative one is read from the working directory, else
    from the repository root (where ``safepatch pipeline`` is usually run)."""
    paths: dict[str, Path | None] = {}
    for name in MODELS:
        raw = report["models"].get(name)
        if raw is None:
            paths[name] = None
            continue
        path = Path(raw)
        if not path.is_absolute() and not path.exists():
            path = ROOT / path
        if not path.is_dir():
            raise SystemExit(f"{report_path}: the {name} model directory {raw} does not exist")
        paths[name] = path
    return paths


def cell(row: WrapperAsr) -> str:
    low, high = row.interval
    return f"{row.asr:.3f} [{low:.3f}, {high:.3f}] ({row.n})"


def table(results: list[ModelRows], columns: list[str]) -> str:
    lines = [
        "| model | " + " | ".join(columns) + " | seconds |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for result in results:
        by_name = {row.wrapper: row for row in result.rows}
        cells = [cell(by_name[name]) if name in by_name else "-" for name in columns]
        seconds = f"{result.seconds:.0f}" if result.path is not None else "no model in the report"
        lines.append(f"| {result.model} | " + " | ".join(cells) + f" | {seconds} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, required=True, help="a pipeline report (JSON)")
    parser.add_argument("--sample", type=int, help="an evenly spaced sample of the prompts")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--judge", choices=sorted(JUDGES), default=DEFAULT_JUDGE)
    parser.add_argument("--max-new-tokens", type=int, default=REPLY_TOKENS)
    args = parser.parse_args()

    report = json.loads(args.report.read_text())
    paths = model_paths(report, args.report)
    prompts = load_prompts(data.REPORT_HARMFUL)
    wrappers = load_wrappers(DEFAULT_WRAPPERS)
    judge = get_judge(args.judge)
    placement = select_placement()
    columns = [PLAIN, *(wrapper.name for wrapper in wrappers)]

    results: list[ModelRows] = []
    started = time.perf_counter()
    for name in MODELS:
        path = paths[name]
        if path is None:
            results.append(ModelRows(name, None, [], 0.0))
            print(f"{name}: no model in the report", flush=True)
            continue
        model_started = time.perf_counter()
        model, tokenizer = load_model(path, device=placement.device)
        rows = jailbreak_asr(
            model,
            tokenizer,
            prompts,
            wrappers,
            judge,
            max_new_tokens=args.max_new_tokens,
            placement=placement,
            sample=args.sample,
        )
        del model
        gc.collect()
        results.append(ModelRows(name, path, rows, time.perf_counter() - model_started))
        print(f"{name}: " + ", ".join(f"{r.wrapper} {cell(r)}" for r in rows), flush=True)
    total = time.perf_counter() - started

    n = next((r.rows[0].n for r in results if r.rows), 0)
    sources = "\n".join(f"- `{w.name}`: `{w.source}`" for w in wrappers)
    body = table(results, columns)
    text = (
        "# ASR under jailbreak wrappers\n\n"
        "Written by `bench/jailbreak_asr.py` (`.venv/bin/python -m bench.jailbreak_asr "
        f"--report {args.report.name}"
        + (f" --sample {args.sample}" if args.sample is not None else "")
        + "`); every figure below was measured by that run.\n\n"
        f"Prompts: the report set's harmful prompts (`workers/data/report/harmful.jsonl`), "
        f"{n} of {len(prompts)}"
        + (" (an evenly spaced sample)" if n < len(prompts) else "")
        + ", answered greedily with up to "
        f"{args.max_new_tokens} new tokens, as written (`plain`) and inside each wrapper. "
        "Each reply is judged against the original request, not the wrapped text. Cells: ASR "
        "[95% Wilson interval] (n). Seconds: loading the model, generating and judging.\n\n"
        f"Suite version of the report: {report.get('suite_version', '?')}; pipeline device "
        f"{report.get('device', '?')}.\n\n"
        f"{body}\n\n"
        f"Judge `{judge.name}`; device {placement.name}; machine {platform.machine()}, "
        f"Python {platform.python_version()}; total {total:.0f} s.\n\n"
        f"Wrappers (docs/jailbreaks.md):\n\n{sources}\n"
    )
    print("\n" + body + f"\n\njudge {judge.name}; device {placement.name}; {total:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
