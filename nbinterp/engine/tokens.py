"""The one token renderer: how a token id is shown to a person (" Mary",
not the tokenizer's "ĠMary" piece). Every view, table and summary uses it."""

from __future__ import annotations

from typing import Any, Sequence


def display_text(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token as text (" Mary", not "ĠMary"); the raw pieces if decoding fails."""
    ids = [int(i) for i in ids]
    try:
        return [tokenizer.decode([i]) for i in ids]
    except Exception:  # noqa: BLE001 - a tokenizer without decode still has pieces
        return tokenizer.convert_ids_to_tokens(ids)


def display_token(tokenizer: Any, token_id: int) -> str:
    """One token as text (see `display_text`)."""
    return display_text(tokenizer, [token_id])[0]
