"""``safepatch`` for the fault tests: the real command, evaluating on a few prompts.

    python -m tests.faults.small_worker worker --name w1@%h

The only difference from ``safepatch worker`` is the evaluation suites: the files in
``$SAFEPATCH_TEST_SUITES_DIR`` (harmful.jsonl, benign.jsonl, general.jsonl) instead of the
bundled 336 prompts, so that a whole job takes under a minute on a busy CPU. Claiming, leases,
heartbeats, retries, checkpoints and resume are the production code, unchanged.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from workers import data

suites = Path(os.environ["SAFEPATCH_TEST_SUITES_DIR"])
# Before anything imports workers.ml.suites, whose SuiteFiles defaults are read from these.
data.HARMFUL_EVAL = suites / "harmful.jsonl"
data.BORDERLINE_EVAL = suites / "benign.jsonl"
data.GENERAL_EVAL = suites / "general.jsonl"

from safepatch.cli import main  # noqa: E402

sys.argv[0] = "safepatch"
sys.exit(main())
