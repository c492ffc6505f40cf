"""Answer-matching metrics for the customer's task (pure Python, no torch)."""

from __future__ import annotations

import re
from collections import Counter

_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def normalize_answer(text: str) -> str:
    """Casefold, drop code fences, collapse whitespace and strip trailing ';' or '.'."""
    text = _FENCE.sub("", text.strip())
    text = " ".join(text.casefold().split())
    return text.rstrip(" ;.")


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 over word and punctuation tokens of the normalized strings."""
    predicted = _TOKEN.findall(normalize_answer(prediction))
    expected = _TOKEN.findall(normalize_answer(reference))
    if not predicted or not expected:
        return float(predicted == expected)
    overlap = sum((Counter(predicted) & Counter(expected)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(predicted)
    recall = overlap / len(expected)
    return 2 * precision * recall / (precision + recall)


def contains_any(reply: str, answers: tuple[str, ...]) -> bool:
    lowered = reply.casefold()
    return any(answer.casefold() in lowered for answer in answers)


def fraction(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0
