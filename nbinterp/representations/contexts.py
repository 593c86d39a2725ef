"""Top-activating contexts and densities of features over a corpus.

One pass over the corpus keeps, for every feature at once, its strongest
documents (the maximum over each document's tokens, so a document appears
once per feature) and how many tokens it is active on. The pass runs in
batches of right-padded documents, one engine forward per batch, and is an
iterator: it reports progress after each batch, stops at `cancel()` and
resumes where it stopped. Passes are cached per (model, site and feature
source, corpus).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from nbinterp.errors import NbinterpError
from nbinterp.vocabulary import BUNDLED_MODEL_NAME

if TYPE_CHECKING:
    from nbinterp.engine.model import Model
    from nbinterp.representations.activations import FeatureSource

CONTEXT_K = 32  # documents kept per feature
ELEMENT_BUDGET = 1 << 25  # feature activations per batch (tokens x features): ~128 MB of float32
MAX_BATCH_TOKENS = 8192
CACHE_SIZE = 4  # context passes kept (per model, source and corpus)


def default_corpus(n_per_task: int = 200, seed: int = 0) -> list[str]:
    """Texts of the bundled model's planted tasks (training split: prompt and
    answer), `n_per_task` of each task: the default corpus for top contexts."""
    from nbinterp.bundled import tasks

    texts: list[str] = []
    for task in tasks.TASKS:
        for example in tasks.examples(task, n_per_task, seed=seed, split="train"):
            texts.append(f"{example.prompt} {example.target}")
    return texts


@dataclass
class Context:
    """One document where a feature fires: `tokens` is a window of it around
    its strongest token (`position`, an index into the document), with the
    feature's activation on each token of the window."""

    doc: int
    position: int
    value: float
    start: int  # document index of tokens[0]
    tokens: list[str]
    activations: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __repr__(self) -> str:
        marked = "".join(f"[[{t}]]" if self.start + i == self.position else t
                         for i, t in enumerate(self.tokens))
        return f"<Context doc {self.doc} @{self.position} = {self.value:.3f}: {marked!r}>"


class ContextIndex:
    """The running top documents and active-token counts of every feature of
    `source` over `corpus` (a list of texts or of token-id lists).

    Iterate it to advance (one batch per step, yields `progress`), or call
    `run()`; `cancel()` stops after the batch in flight. Thread-safe: two
    iterators share the remaining batches."""

    def __init__(self, model: "Model", source: "FeatureSource", corpus: Sequence[Any],
                 batch_tokens: int | None = None, k: int = CONTEXT_K) -> None:
        self.model, self.source, self.k = model, source, k
        self.docs = corpus_ids(model, corpus)
        lengths = [len(d) for d in self.docs]
        budget = batch_tokens or max(1, min(MAX_BATCH_TOKENS, ELEMENT_BUDGET // max(source.n_features, 1)))
        if not isinstance(budget, int) or budget < 1:
            raise NbinterpError(f"batch_size (tokens per forward) must be a positive integer, not {batch_tokens!r}")
        self.batches = _batches(lengths, budget)
        self.total_tokens = sum(lengths)
        n = source.n_features
        self._values = torch.full((n, 0), -float("inf"))
        self._doc = torch.zeros((n, 0), dtype=torch.long)
        self._pos = torch.zeros((n, 0), dtype=torch.long)
        self._active = torch.zeros(n, dtype=torch.long)
        self._seen_tokens = 0  # counted tokens (padding and <bos> excluded)
        self._next = 0
        self._retry: list[int] = []  # batches whose forward was interrupted, handed out again first
        self._done_batches = 0
        self._done_docs = 0
        self._done_tokens = 0
        self._lock = threading.Lock()  # hands out batches
        self._merge = threading.Lock()
        self._stop = threading.Event()
        self._bos = getattr(model.tokenizer, "bos_token_id", None)

    # ------------------------------------------------------------ progress
    @property
    def finished(self) -> bool:
        return self._done_batches == len(self.batches)

    @property
    def progress(self) -> dict[str, Any]:
        return {"done_docs": self._done_docs, "total_docs": len(self.docs), "done_tokens": self._done_tokens,
                "total_tokens": self.total_tokens, "finished": self.finished}

    def cancel(self) -> None:
        """Stop after the batch in flight; iterating again resumes."""
        self._stop.set()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._stop.clear()
        while not self._stop.is_set():
            with self._lock:
                if self._retry:
                    index = self._retry.pop()
                elif self._next < len(self.batches):
                    index = self._next
                    self._next += 1
                else:
                    return
            try:
                self._process(self.batches[index])
            except BaseException:
                # an error or a kernel interrupt mid-batch: nothing of it was
                # merged (the merge is one assignment), so the pass keeps what
                # it has and the batch is done again on resume
                with self._lock:
                    self._retry.append(index)
                raise
            yield self.progress

    def run(self) -> "ContextIndex":
        """Finish the pass (resuming a cancelled one); returns self."""
        for _ in self:
            pass
        return self

    # ------------------------------------------------------------ results
    def _check(self, feature: int) -> int:
        return self.source.check_feature(feature)

    def top(self, feature: int, k: int = 10) -> list[tuple[int, int, float]]:
        """(document, position, activation) of the feature's k strongest
        documents so far, among those where it is active (> 0)."""
        feature = self._check(feature)
        with self._merge:
            values, docs, positions = self._values[feature], self._doc[feature], self._pos[feature]
        keep = values > 0
        out = list(zip(docs[keep].tolist(), positions[keep].tolist(), values[keep].tolist()))
        return out[: max(0, min(k, self.k))]

    def density(self, feature: int) -> float:
        """Fraction of the corpus tokens counted so far (padding and <bos>
        excluded) where the feature's activation is > 0. NaN before any."""
        feature = self._check(feature)
        return float(self._active[feature]) / self._seen_tokens if self._seen_tokens else float("nan")

    @property
    def tokens_seen(self) -> int:
        return self._seen_tokens

    def contexts(self, feature: int, k: int = 10, before: int = 12, after: int = 4) -> list[Context]:
        """The top k documents as `Context` windows, with the feature's
        activation on every token of the window (one forward for all k)."""
        entries = self.top(feature, k)
        if not entries:
            return []
        rows = [self.docs[doc] for doc, _, _ in entries]
        with self.model.lock:
            activations = self._encode_rows(rows)[0][..., feature]
        from nbinterp.engine.tokens import display_text

        out = []
        for row, (doc, position, value) in enumerate(entries):
            start, stop = max(0, position - before), min(len(rows[row]), position + after + 1)
            out.append(Context(doc, position, value, start, display_text(self.model.tokenizer, rows[row][start:stop].tolist()),
                               activations[row, start:stop].tolist()))
        return out

    # ------------------------------------------------------------ the pass
    def _encode_rows(self, rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Feature activations [B, T, n_features] of right-padded documents
        (one forward), with the padded ids and the mask [B, T]."""
        site, layer = self.source.site, self.source.layer
        saved, mask = self.model.capture_batch(rows, {site: {layer}})
        length = mask.shape[1]
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
        x = saved[site][layer].reshape(len(rows), length, -1)
        acts = self.source.encode(x.reshape(len(rows) * length, -1))
        return acts.reshape(len(rows), length, -1), ids, mask

    def _process(self, batch: list[int]) -> None:
        rows = [self.docs[i] for i in batch]
        with self.model.lock:
            acts, ids, mask = self._encode_rows(rows)
        valid = mask.bool()
        if self._bos is not None:
            valid &= ids != self._bos  # <bos> is an attention sink: huge, meaningless activations
        active = acts > 0
        active &= valid[..., None]
        counts = active.sum((0, 1))
        del active
        acts.masked_fill_(~valid[..., None], -float("inf"))
        best, where = acts.max(dim=1)  # [B, F]: each document once per feature
        del acts
        docs = torch.tensor(batch, dtype=torch.long)[:, None].expand_as(where)
        with self._merge:
            values = torch.cat([self._values, best.T], dim=1)
            doc = torch.cat([self._doc, docs.T], dim=1)
            pos = torch.cat([self._pos, where.T], dim=1)
            keep = min(self.k, values.shape[1])
            values, order = values.topk(keep, dim=1)
            merged = (values, doc.gather(1, order), pos.gather(1, order), self._active + counts,
                      self._seen_tokens + int(valid.sum()), self._done_batches + 1, self._done_docs + len(batch),
                      self._done_tokens + sum(len(r) for r in rows))
            # one assignment, so an interrupt leaves the pass before or after this batch, never half-way
            (self._values, self._doc, self._pos, self._active, self._seen_tokens, self._done_batches,
             self._done_docs, self._done_tokens) = merged


def corpus_ids(model: "Model", corpus: Sequence[Any]) -> list[torch.Tensor]:
    """Each document as token ids [n] (texts are tokenized; id lists checked)."""
    if isinstance(corpus, (str, bytes)) or not isinstance(corpus, Sequence) or len(corpus) == 0:
        raise NbinterpError("a corpus is a non-empty list of texts (or of token-id lists)")
    docs = []
    for i, doc in enumerate(corpus):
        try:
            docs.append(model.tokenize(doc)[0])
        except NbinterpError as exc:
            raise NbinterpError(f"corpus document {i}: {exc}") from None
    return docs


def _batches(lengths: list[int], budget: int) -> list[list[int]]:
    """Documents grouped longest first, each batch's rows x longest <= budget tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * longest > budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def corpus_key(corpus: Sequence[Any]) -> str:
    digest = hashlib.sha1()
    for doc in corpus:
        if isinstance(doc, str):
            digest.update(b"s" + doc.encode())
        else:
            digest.update(b"i" + torch.as_tensor(doc, dtype=torch.long).numpy().tobytes())
        digest.update(b"\0")
    return digest.hexdigest()


_CACHE: OrderedDict[tuple, ContextIndex] = OrderedDict()
_DEFAULT_CORPUS: list[str] | None = None


def context_index(model: "Model", source: "FeatureSource", corpus: Sequence[Any] | None = None,
                  batch_tokens: int | None = None) -> ContextIndex:
    """The cached pass of `source` over `corpus` (default: the bundled tasks'
    texts, for the bundled model); not run yet if new."""
    global _DEFAULT_CORPUS
    if corpus is None:
        if model.name != BUNDLED_MODEL_NAME:
            raise NbinterpError(
                "top contexts need corpus=[text, ...] for this model: the default corpus is the bundled "
                "model's task texts, in its own vocabulary")
        if _DEFAULT_CORPUS is None:
            _DEFAULT_CORPUS = default_corpus()
        corpus = _DEFAULT_CORPUS
    key = (id(model), source.key, corpus_key(corpus))
    index = _CACHE.get(key)
    if index is None or index.model is not model:
        index = ContextIndex(model, source, corpus, batch_tokens)
        _CACHE[key] = index
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return index
