"""Query normalization for the exact tier."""

from __future__ import annotations

import unicodedata

# Sentence-ending punctuation that does not change what a question asks.
_TRAILING_PUNCTUATION = ".?!,;:…。？！、"


def normalize_query(text: str) -> str:
    """Unicode NFKC, case-fold, collapse whitespace, trim trailing punctuation.

    Two queries with the same normalized text are the same question for the exact tier.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    collapsed = " ".join(folded.split())
    return collapsed.rstrip(_TRAILING_PUNCTUATION + " ")
