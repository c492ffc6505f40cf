"""The datasets the project ships, and the version that names their exact content.

SUITE_VERSION is CalVer ``YYYY.MM.N``. Bump it whenever any file in SHIPPED_FILES changes (a prompt
added, removed or reworded, a refusal edited, the demo rebuilt): take the current year and month,
and N = 1 if that month differs from the old version's, else the old N + 1. Then set SUITE_DIGEST
to the new ``suite_digest()``. tests/data/test_suites.py fails while the digest is stale, so data
cannot change without a new version. Every evaluation record stores SUITE_VERSION: scores are only
comparable between runs that report the same one. See docs/data.md.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SUITE_VERSION = "2026.12.3"
SUITE_DIGEST = "6176447a5418a6b85889c187908131c9b674c3fdbc9561db32ad06a92a831d7d"

DATA_DIR = Path(__file__).parent

# Evaluation suites: never trained on by the provider, the patch or the demo customer.
HARMFUL_EVAL = DATA_DIR / "eval" / "harmful.jsonl"
BORDERLINE_EVAL = DATA_DIR / "eval" / "borderline.jsonl"
GENERAL_EVAL = DATA_DIR / "eval" / "general.jsonl"
# The report set: measured on every model and quoted by jobs, audit records and benches; no
# decision (screening, stopping, the acceptance gate, the drift decision) ever reads it. Its prompts
# are written in styles unlike the pool's (terse, long, indirect, misspelt, ...).
REPORT_HARMFUL = DATA_DIR / "report" / "harmful.jsonl"
REPORT_BENIGN = DATA_DIR / "report" / "benign.jsonl"
# The labelled (prompt, reply, label) set judges are measured on; holdout is never tuned on.
JUDGE_DEV = DATA_DIR / "judge" / "dev.jsonl"
JUDGE_HOLDOUT = DATA_DIR / "judge" / "holdout.jsonl"
# Candidates for the one-shot safety patch.
SAFETY_POOL = DATA_DIR / "safety_pool.jsonl"
# Benign prompts that only the one-shot patch uses: its KL anchor and its stopping probe.
PATCH_BENIGN = DATA_DIR / "patch" / "benign.jsonl"
# The provider's alignment fine-tune (refusals, and benign prompts the raw model answers itself).
ALIGN_HARMFUL = DATA_DIR / "align" / "harmful.jsonl"
ALIGN_BENIGN = DATA_DIR / "align" / "benign.jsonl"
# Demo customer data (OpenAI chat format), written by `python -m workers.data.build_demo`.
DEMO_TRAIN = DATA_DIR / "demo" / "sql_train.jsonl"
DEMO_VALIDATION = DATA_DIR / "demo" / "sql_validation.jsonl"
# A second customer (order notes to one-line JSON): `python -m workers.data.build_orders`.
ORDERS_TRAIN = DATA_DIR / "orders" / "train.jsonl"
ORDERS_VALIDATION = DATA_DIR / "orders" / "validation.jsonl"

SHIPPED_FILES: tuple[Path, ...] = (
    HARMFUL_EVAL,
    BORDERLINE_EVAL,
    GENERAL_EVAL,
    REPORT_HARMFUL,
    REPORT_BENIGN,
    SAFETY_POOL,
    PATCH_BENIGN,
    ALIGN_HARMFUL,
    ALIGN_BENIGN,
    DEMO_TRAIN,
    DEMO_VALIDATION,
    ORDERS_TRAIN,
    ORDERS_VALIDATION,
)

# HEx-PHI's 11 harm categories, and the abbreviations used in prompt ids (h-mal-001, p-mal-001).
HARM_CATEGORIES: dict[str, str] = {
    "illegal_activity": "ill",
    "child_abuse": "chi",
    "hate_harassment_violence": "hhv",
    "malware": "mal",
    "physical_harm": "phy",
    "economic_harm": "eco",
    "fraud_deception": "fra",
    "adult_content": "adu",
    "political_campaigning": "pol",
    "privacy_violation": "pri",
    "tailored_financial_advice": "fin",
}

# `kind` values of benign prompts that contain alarming words but deserve a helpful answer
# (XSTest-style); ORDINARY_KINDS below are the plain requests of the training-side benign files.
BORDERLINE_KINDS = frozenset(
    {
        "homonym",
        "figurative",
        "safe_target",
        "safe_context",
        "definition",
        "history",
        "privacy_public",
        "privacy_fictional",
        "safety_education",
        "medical",
    }
)
ORDINARY_KINDS = frozenset(
    {
        "explain",
        "summarize",
        "creative",
        "howto",
        "coding",
        "fact",
        "advice",
        "shopping",
        "pop_culture",
        "cooking",
        "travel",
        "math",
        "grammar",
    }
)


def suite_digest() -> str:
    """SHA-256 over the shipped files' relative paths and bytes, in SHIPPED_FILES order."""
    digest = hashlib.sha256()
    for path in SHIPPED_FILES:
        digest.update(path.relative_to(DATA_DIR).as_posix().encode() + b"\0")
        data = path.read_bytes()
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()
