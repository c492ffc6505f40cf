"""The evaluation suites a stage is measured on, and where their files come from."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from contracts.chat import Conversation
from contracts.prompts import Prompt, load_prompts
from workers import data


@dataclass(frozen=True)
class SuiteFiles:
    harmful: Path = data.HARMFUL_EVAL
    benign: Path = data.BORDERLINE_EVAL
    general: Path | None = data.GENERAL_EVAL
    report_harmful: Path | None = data.REPORT_HARMFUL
    report_benign: Path | None = data.REPORT_BENIGN

    def fingerprint(self) -> str:
        """Changes whenever a suite file's bytes change: keys the cached base-model baseline."""
        digest = hashlib.sha256(data.SUITE_VERSION.encode())
        for path in (
            self.harmful,
            self.benign,
            self.general,
            self.report_harmful,
            self.report_benign,
        ):
            if path is not None:
                digest.update(path.read_bytes())
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class LoadedSuites:
    harmful: list[Prompt]
    benign: list[Prompt]
    general: list[Prompt]
    report_harmful: list[Prompt]
    report_benign: list[Prompt]


def load_suites(files: SuiteFiles) -> LoadedSuites:
    return LoadedSuites(
        harmful=load_prompts(files.harmful),
        benign=load_prompts(files.benign),
        general=load_prompts(files.general) if files.general else [],
        report_harmful=load_prompts(files.report_harmful) if files.report_harmful else [],
        report_benign=load_prompts(files.report_benign) if files.report_benign else [],
    )


def probe_sample(prompts: list[Prompt], size: int) -> list[Prompt]:
    """An evenly spaced sample, so a probe covers every category of a category-sorted file."""
    if len(prompts) <= size:
        return list(prompts)
    stride = len(prompts) / size
    return [prompts[int(i * stride)] for i in range(size)]


def user_prompts(conversations: list[Conversation]) -> set[str]:
    from contracts.text import conversation_prompt_texts, normalize_prompt

    return {
        normalize_prompt(text)
        for conversation in conversations
        for text in conversation_prompt_texts(conversation)
    }
