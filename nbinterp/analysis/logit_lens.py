"""Logit lens: read the residual stream at every layer and position through
the model's own final norm and unembedding, as if the model stopped there.

Row 0 is the embeddings (the residual stream entering layer 0), row l + 1
the stream after block l; the last row is the model's actual prediction.

The full-vocabulary lens of every row and position costs ~6x a forward on a
49k vocabulary, so it comes in two parts (`first_paint`):

- the first paint, from ONE forward of the prompt: the last row at every
  position (the lens of the final stream, reduced in that trace), and every
  row at the last position (one one-token trace over the captured streams);
- the rest (`LensRemainder`): the captured streams of the other rows, read
  chunk by chunk of rows through `engine.weights.lens_of_streams` (one-token
  traces, no new forward of the prompt), filling the same `LogitLens` in
  place; iterate it, `cancel()` it, or `run()` it.

Everything is reduced where the model lives (top token, its probability,
the target's probability), so only [rows, T] numbers come back and the same
calls work remotely. `computed` says which cells hold numbers; the others
are NaN (probabilities) and -1 (token ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import torch

from nbinterp.engine.plan import Plan
from nbinterp.engine.tokens import display_text
from nbinterp.analysis.chunked import ChunkedWork
from nbinterp.engine.weights import lens_of_streams
from nbinterp.vocabulary import renamed_function

if TYPE_CHECKING:
    from nbinterp.engine.model import Model

# Logits one chunk of the remainder holds (rows x T x vocab float32: ~256 MB):
# 5 rows of SmolLM2 at T = 256, so each chunk lands in about a forward's time.
CHUNK_ELEMENTS = 1 << 26


@dataclass
class LogitLens:
    """[layers + 1, T] tensors; row labels say which residual stream each row reads."""

    tokens: list[str]  # the prompt, as display text
    row_labels: list[str]  # "embed", "L0", ..., "L{n-1}" (after that block)
    top_token_ids: torch.Tensor  # long, -1 where not computed yet
    top_probabilities: torch.Tensor  # float32, NaN where not computed yet
    target: str | None
    target_id: int | None
    target_probabilities: torch.Tensor | None  # float32, None without a target
    top_tokens: list[list[str]]  # display text of top_token_ids ("" where not computed yet)
    computed: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.bool))  # bool [rows, T]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.top_probabilities.shape)  # type: ignore[return-value]

    @property
    def complete(self) -> bool:
        return bool(self.computed.all())

    def fill(self, rows: list[int], positions: slice, entries: dict, tokenizer: Any) -> None:
        """Write the reduced lens of `rows` at `positions` (from the engine's "lens" entries)."""
        for row in rows:
            entry = entries[row]
            ids = entry.top_token.reshape(-1).cpu()
            self.top_token_ids[row, positions] = ids
            self.top_probabilities[row, positions] = entry.top_probability.reshape(-1).float().cpu()
            if self.target_probabilities is not None:
                self.target_probabilities[row, positions] = entry.token_probabilities.reshape(-1).float().cpu()
            texts = display_text(tokenizer, ids.tolist())
            columns = range(len(self.tokens))[positions]
            for column, text in zip(columns, texts):
                self.top_tokens[row][column] = text
            self.computed[row, positions] = True


class LensRemainder(ChunkedWork):
    """The rows of a first-painted lens still to compute, a chunk of rows per
    step (one one-token trace each): `for rows in rest: ...`, `rest.cancel()`."""

    def __init__(self, model: "Model", lens: LogitLens, streams: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.model, self.lens, self.streams = model, lens, streams
        n_tokens = len(lens.tokens)
        self.rows_per_chunk = max(1, CHUNK_ELEMENTS // max(1, n_tokens * model.shape.vocab_size))
        self.pending = [row for row in range(len(lens.row_labels)) if not bool(lens.computed[row].all())]
        self.total = len(self.pending)

    @property
    def done(self) -> int:
        return self.total - len(self.pending)

    def _step(self) -> list[int]:
        rows = self.pending[: self.rows_per_chunk]
        tokens = () if self.lens.target_id is None else (self.lens.target_id,)
        entries = lens_of_streams(self.model, {row: self.streams[row] for row in rows}, tokens)
        self.lens.fill(rows, slice(None), entries, self.model.tokenizer)
        self.pending = self.pending[len(rows):]
        return rows

    def run(self) -> LogitLens:
        for _ in self:
            pass
        return self.lens


def first_paint(model: "Model", prompt: Any, target: str | int | None = None) -> tuple[LogitLens, LensRemainder]:
    """The lens's first paint (one forward of the prompt: the model's output
    row at every position, every row at the last position) and what remains."""
    input_ids = model.tokenize(prompt)
    target_id = None if target is None else model.token_id(target)
    tokens = () if target_id is None else (target_id,)
    n, n_tokens = model.n_layers, input_ids.shape[1]
    # the final stream's lens in the forward; every earlier stream captured for the rest
    capture = {"resid_pre": set(range(n)), "lens": {n}}
    saved = model.execute(input_ids, Plan(), capture, logits="none", lens_tokens=tokens)
    streams = {row: saved["resid_pre"][row].reshape(n_tokens, -1) for row in range(n)}
    tokenizer = model.tokenizer
    rows = n + 1
    lens = LogitLens(
        tokens=display_text(tokenizer, input_ids[0].tolist()),
        row_labels=["embed"] + [f"L{layer}" for layer in range(n)],
        top_token_ids=torch.full((rows, n_tokens), -1, dtype=torch.long),
        top_probabilities=torch.full((rows, n_tokens), float("nan")),
        target=None if target is None else (target if isinstance(target, str) else tokenizer.decode([target_id])),
        target_id=target_id,
        target_probabilities=None if target_id is None else torch.full((rows, n_tokens), float("nan")),
        top_tokens=[[""] * n_tokens for _ in range(rows)],
        computed=torch.zeros(rows, n_tokens, dtype=torch.bool),
    )
    lens.fill([n], slice(None), saved["lens"], tokenizer)
    if n_tokens > 1:  # the last position of every other row: one one-token trace
        last = slice(n_tokens - 1, n_tokens)
        lens.fill(list(range(n)), last, lens_of_streams(model, {r: s[-1:] for r, s in streams.items()}, tokens),
                  tokenizer)
    return lens, LensRemainder(model, lens, streams)


def compute_logit_lens(model: "Model", prompt: Any, target: str | int | None = None) -> LogitLens:
    """Top token and target probability at every layer and position of `prompt`
    (one forward of the prompt, then one-token traces reading its captured streams)."""
    lens, rest = first_paint(model, prompt, target)
    return rest.run()


# `logit_lens` was this function's name; `ni.logit_lens` is the view
__getattr__ = renamed_function(__name__, "logit_lens", compute_logit_lens)
