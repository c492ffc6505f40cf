"""Answer-matching metrics for the customer's task (pure Python, no torch)."""

from __future__ import annotations

import math
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


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a rate of ``successes`` in ``n`` (0 to 1 when n is 0).

    Unlike the normal approximation it stays inside [0, 1] and is not zero-width at 0 of n,
    which matters here: an aligned model's ASR is a few prompts of a couple of hundred.
    """
    if n == 0:
        return (0.0, 1.0)
    rate = successes / n
    denominator = 1 + z * z / n
    centre = (rate + z * z / (2 * n)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / denominator
    # At 0 or n of n the bound is exactly the rate; floating point would land a hair inside it.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


def rate_with_interval(flags: list[bool]) -> tuple[float, tuple[float, float]]:
    """The share of True in ``flags`` and its Wilson interval."""
    return fraction(flags), wilson_interval(sum(flags), len(flags))
