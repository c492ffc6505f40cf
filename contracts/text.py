"""Prompt normalisation, for the disjointness and near-duplicate checks: evaluation prompts are
kept out of training data, and the patch example out of the customer's data."""

from __future__ import annotations

import unicodedata

from contracts.chat import Conversation


def conversation_prompt_texts(conversation: Conversation) -> list[str]:
    """The user messages of a conversation, in order."""
    return [message.content for message in conversation if message.role == "user"]


def normalize_prompt(text: str) -> str:
    """Casefold, drop apostrophes, turn other punctuation and symbols into spaces, collapse spaces.

    "Can't" and "cant" compare equal; "e-mail" becomes "e mail". Used to keep evaluation prompts
    out of training data and the patch example out of the customer's data.
    """
    chars: list[str] = []
    for char in unicodedata.normalize("NFKC", text).casefold():
        if char in "'\u2018\u2019`":
            continue
        chars.append(" " if unicodedata.category(char)[0] in "PS" else char)
    return " ".join("".join(chars).split())


def prompt_tokens(text: str) -> frozenset[str]:
    """The set of words of a normalised prompt."""
    return frozenset(normalize_prompt(text).split())


def token_jaccard(a: str, b: str) -> float:
    """Jaccard similarity of two prompts' word sets (1.0: same words)."""
    tokens_a, tokens_b = prompt_tokens(a), prompt_tokens(b)
    if not tokens_a and not tokens_b:
        return 1.0
    return len(tokens_a & tokens_b) / len(tokens_a | tokens_b)
