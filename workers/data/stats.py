"""Print the shipped datasets' counts as markdown tables (pasted into docs/data.md).

python -m workers.data.stats
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from contracts.chat import Conversation, load_chat_jsonl
from contracts.prompts import load_prompts
from workers.data import (
    ALIGN_BENIGN,
    ALIGN_HARMFUL,
    BORDERLINE_EVAL,
    BORDERLINE_KINDS,
    DATA_DIR,
    DEMO_TRAIN,
    DEMO_VALIDATION,
    GENERAL_EVAL,
    HARM_CATEGORIES,
    HARMFUL_EVAL,
    ORDERS_TRAIN,
    ORDERS_VALIDATION,
    PATCH_BENIGN,
    REPORT_BENIGN,
    REPORT_HARMFUL,
    SAFETY_POOL,
    SHIPPED_FILES,
    SUITE_VERSION,
)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def is_task(conversation: Conversation) -> bool:
    """The customers' task examples carry a system prompt; their harmful examples do not."""
    return conversation[0].role == "system"


def render() -> str:
    harmful = {path: Counter(p.category for p in load_prompts(path)) for path in
               (HARMFUL_EVAL, REPORT_HARMFUL, SAFETY_POOL, ALIGN_HARMFUL)}  # fmt: skip
    category_rows = [
        [name, *(str(harmful[path][name]) for path in harmful)] for name in HARM_CATEGORIES
    ]
    category_rows.append(["**total**", *(f"**{sum(c.values())}**" for c in harmful.values())])

    kinds = {path: Counter(p.kind for p in load_prompts(path)) for path in
             (BORDERLINE_EVAL, REPORT_BENIGN, ALIGN_BENIGN, PATCH_BENIGN)}  # fmt: skip
    all_kinds = sorted({kind for counter in kinds.values() for kind in counter if kind})
    all_kinds.sort(key=lambda kind: (kind not in BORDERLINE_KINDS, kind))
    kind_rows = [
        [kind if kind in BORDERLINE_KINDS else f"{kind} (ordinary)"]
        + [str(kinds[path][kind]) for path in kinds]
        for kind in all_kinds
    ]
    kind_rows.append(["**total**", *(f"**{sum(c.values())}**" for c in kinds.values())])

    def rel(path: Path) -> str:
        return path.relative_to(DATA_DIR).as_posix()

    file_rows: list[list[str]] = []
    for path in SHIPPED_FILES:
        if path in (DEMO_TRAIN, DEMO_VALIDATION, ORDERS_TRAIN, ORDERS_VALIDATION):
            conversations = load_chat_jsonl(path)
            n_task = sum(1 for c in conversations if is_task(c))
            detail = f"{n_task} task + {len(conversations) - n_task} harmful"
            file_rows.append([rel(path), str(len(conversations)), detail])
        else:
            prompts = load_prompts(path)
            detail = "with answer keywords" if path == GENERAL_EVAL else ""
            file_rows.append([rel(path), str(len(prompts)), detail])

    return "\n\n".join(
        [
            f"Suite version {SUITE_VERSION}.",
            table(["file", "examples", "notes"], file_rows),
            table(
                ["category", *(rel(path) for path in harmful)],
                category_rows,
            ),
            table(["kind", *(rel(path) for path in kinds)], kind_rows),
        ]
    )


def main() -> None:
    print(render())


if __name__ == "__main__":
    main()
