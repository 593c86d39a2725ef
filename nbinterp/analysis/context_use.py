"""Does the model use a span of its context for the answer?

- Lookback ratio per head (Chuang et al. 2024, "Lookback Lens"): at the answer
  position, the mean attention to a context token over the mean attention to
  a context token plus the mean attention to any other token:
  ratio = a_ctx / (a_ctx + a_rest), 0.5 when a head attends to both alike.
- Knockout (measured, one forward): every attention edge from a query after
  the context to a key inside it is removed, in every head of every layer
  (rows renormalised onto the remaining keys, which always include the query
  itself). The answer and its logit before and after say whether the answer
  came through the context.
- Verdict from the knockout, thresholds named below: "used" when the answer
  changes; "partly" when it stays but its probability falls below
  PARTLY_RATIO of what it was; "ignored" otherwise.
- A detector: logistic regression over the per-head ratios, fitted on
  labelled prompts (1 = the context is followed), reusable through
  `compute_context_use(..., detector=fitted)`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from nbinterp.engine.tokens import display_text, display_token
from nbinterp.errors import NbinterpError
from nbinterp.vocabulary import renamed_function

if TYPE_CHECKING:
    from nbinterp.engine.model import Model

# The answer stays the same but P(answer) after the knockout is below this share of
# P(answer) before: the context was "partly" used.
PARTLY_RATIO = 0.5


@dataclass
class Knockout:
    """The answer with and without every attention edge into the context."""

    answer_before: str
    answer_after: str
    probability_before: float  # P(answer_before), clean
    probability_after: float  # P(answer_before), context knocked out
    metric_before: float  # logit(answer_before) - logit(rival), clean
    metric_after: float  # the same with the context knocked out
    rival: str  # answer_after, or the clean runner-up when the answer does not change
    n_edges: int


@dataclass
class ContextUse:
    tokens: list[str]
    context: tuple[int, int]  # token positions [start, end)
    position: int  # the answer position
    attention: torch.Tensor  # float32 [layers, heads, T]: attention from the answer position
    ratio: torch.Tensor  # float32 [layers, heads]: Lookback ratio
    knockout: Knockout
    verdict: str  # "used" | "partly" | "ignored"
    reason: str  # the numbers and thresholds behind the verdict
    score: float | None  # the detector's P(context followed), with detector=


# ------------------------------------------------------------------ the span
def context_span(model: "Model", input_ids: torch.Tensor, context: Any) -> tuple[int, int]:
    """`context` as token positions [start, end): a (start, end) pair, or text found in the prompt."""
    n_tokens = input_ids.shape[1]
    if isinstance(context, (tuple, list)) and len(context) == 2 and all(isinstance(v, int) for v in context):
        start, end = int(context[0]), int(context[1])
        if not 0 <= start < end <= n_tokens:
            raise NbinterpError(f"context {tuple(context)} must satisfy 0 <= start < end <= {n_tokens}")
        return start, end
    if not isinstance(context, str) or not context.strip():
        raise NbinterpError("context= is the context's text (as it appears in the prompt) or (start, end) token positions")
    ids = input_ids[0].tolist()
    for text in (context, " " + context):
        piece = model.tokenizer(text, add_special_tokens=False).input_ids
        for start in range(len(ids) - len(piece) + 1):
            if piece and ids[start : start + len(piece)] == piece:
                return start, start + len(piece)
    raise NbinterpError(f"the context {context!r} does not occur token for token in the prompt: pass (start, end) positions")


def lookback_ratio(attention_row: torch.Tensor, start: int, end: int, position: int) -> torch.Tensor:
    """[..., T] attention from one query -> [...] ratio of mean context attention to the sum of both means."""
    seen = attention_row[..., : position + 1]
    inside = seen[..., start:end].mean(-1)
    rest_count = position + 1 - (end - start)
    if rest_count <= 0:
        raise NbinterpError("the context covers every token the answer position sees: nothing to compare it with")
    rest = (seen.sum(-1) - seen[..., start:end].sum(-1)) / rest_count
    return inside / (inside + rest).clamp_min(1e-12)


def answer_attention(model: "Model", run: Any, position: int) -> torch.Tensor:
    """float32 [layers, heads, T]: every head's attention from `position`."""
    return torch.stack([run.attention(layer)[:, position, :] for layer in range(model.n_layers)]).float()


def lookback_ratios(model: "Model", prompt: Any, context: Any, position: int = -1) -> torch.Tensor:
    """[layers, heads] Lookback ratios alone (one forward, no knockout): the detector's features."""
    input_ids = model.tokenize(prompt)
    position %= input_ids.shape[1]
    start, end = context_span(model, input_ids, context)
    run = model.run(input_ids, capture=["qkv"])
    return lookback_ratio(answer_attention(model, run, position), start, end, position)


# ------------------------------------------------------------------ the analysis
def compute_context_use(model: "Model", prompt: Any, context: Any, detector: "ContextDetector | None" = None,
                position: int = -1) -> ContextUse:
    input_ids = model.tokenize(prompt)
    n_tokens = input_ids.shape[1]
    if not -n_tokens <= position < n_tokens:
        raise NbinterpError(f"position {position} is outside the prompt's 0..{n_tokens - 1}")
    position %= n_tokens
    start, end = context_span(model, input_ids, context)
    if end > position:
        raise NbinterpError(
            f"the context ends at token {end}, after the answer position {position}: it must come before the answer"
        )
    run = model.run(input_ids, capture=["qkv", "logits"])
    attention = answer_attention(model, run, position)
    ratio = lookback_ratio(attention, start, end, position)

    edges = [(layer, head, query, key) for layer in range(model.n_layers) for head in range(model.n_heads)
             for query in range(end, n_tokens) for key in range(start, end)]
    knocked = model.run(input_ids, knockout=edges, capture=["logits"])
    knockout = _knockout(model, run.logits_at(position), knocked.logits_at(position), len(edges))
    verdict, reason = _verdict(knockout)
    score = None if detector is None else float(detector.score(ratio[None])[0])
    return ContextUse(
        tokens=display_text(model.tokenizer, input_ids[0].tolist()), context=(start, end), position=position,
        attention=attention, ratio=ratio, knockout=knockout, verdict=verdict, reason=reason, score=score,
    )


def _knockout(model, clean: torch.Tensor, knocked: torch.Tensor, n_edges: int) -> Knockout:
    decode = lambda i: display_token(model.tokenizer, int(i))  # noqa: E731
    before, after = int(clean.argmax()), int(knocked.argmax())
    rival = after if after != before else int(clean.topk(2).indices[1])
    p_clean, p_knocked = torch.softmax(clean, -1), torch.softmax(knocked, -1)
    return Knockout(
        answer_before=decode(before), answer_after=decode(after),
        probability_before=float(p_clean[before]), probability_after=float(p_knocked[before]),
        metric_before=float(clean[before] - clean[rival]), metric_after=float(knocked[before] - knocked[rival]),
        rival=decode(rival), n_edges=n_edges,
    )


def _verdict(k: Knockout) -> tuple[str, str]:
    share = k.probability_after / max(k.probability_before, 1e-30)
    numbers = (f"P({k.answer_before!r}) {k.probability_before:.3f} -> {k.probability_after:.3f} "
               f"({share:.2f} of it), logit({k.answer_before!r}) - logit({k.rival!r}) "
               f"{k.metric_before:.2f} -> {k.metric_after:.2f}")
    if k.answer_after != k.answer_before:
        return "used", f"the answer changes from {k.answer_before!r} to {k.answer_after!r} without the context; {numbers}"
    if share < PARTLY_RATIO:
        return "partly", f"the answer stays {k.answer_before!r} but its probability falls below {PARTLY_RATIO} of itself; {numbers}"
    return "ignored", f"the answer stays {k.answer_before!r} and keeps at least {PARTLY_RATIO} of its probability; {numbers}"


# ------------------------------------------------------------------ the detector
@dataclass
class ContextDetector:
    """Logistic regression over per-head Lookback ratios: P(context followed)."""

    weight: torch.Tensor  # float64 [layers * heads]
    bias: float
    mean: torch.Tensor  # feature standardisation
    std: torch.Tensor
    shape: tuple[int, int]  # (layers, heads) it was fitted for

    @classmethod
    def fit(cls, ratios: torch.Tensor, labels: Sequence[int], l2: float = 1e-2, steps: int = 200) -> "ContextDetector":
        """ratios [n, layers, heads], labels 1 = context followed, 0 = not."""
        x = torch.as_tensor(ratios, dtype=torch.float64).flatten(1)
        y = torch.as_tensor(list(labels), dtype=torch.float64)
        if x.shape[0] != y.shape[0] or not set(y.tolist()) <= {0.0, 1.0} or len(set(y.tolist())) < 2:
            raise NbinterpError("fit needs one 0/1 label per prompt and both labels present")
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        z = (x - mean) / std
        w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

        def loss_fn():
            optimiser.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w @ w)
            loss.backward()
            return loss

        optimiser.step(loss_fn)
        return cls(w.detach(), float(b.detach()), mean, std, tuple(ratios.shape[1:]))

    def score(self, ratios: torch.Tensor) -> torch.Tensor:
        """[n, layers, heads] -> [n] P(context followed)."""
        ratios = torch.as_tensor(ratios, dtype=torch.float64)
        if tuple(ratios.shape[1:]) != self.shape:
            raise NbinterpError(f"this detector was fitted on {self.shape} heads, not {tuple(ratios.shape[1:])}")
        z = (ratios.flatten(1) - self.mean) / self.std
        return torch.sigmoid(z @ self.weight + self.bias)


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties half."""
    s = torch.as_tensor(list(scores), dtype=torch.float64)
    y = torch.as_tensor(list(labels), dtype=torch.bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        raise NbinterpError("AUROC needs both labels present")
    greater = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    return float(greater.mean())


def bootstrap_auroc(scores: Sequence[float], labels: Sequence[int], n: int = 1000, level: float = 0.95,
                    seed: int = 0) -> tuple[float, float, float]:
    """(AUROC, low, high): a percentile bootstrap interval over prompts."""
    scores, labels = list(scores), list(labels)
    rng = random.Random(seed)
    values = []
    while len(values) < n:
        pick = [rng.randrange(len(scores)) for _ in scores]
        chosen = [labels[i] for i in pick]
        if 0 < sum(chosen) < len(chosen):
            values.append(auroc([scores[i] for i in pick], chosen))
    values.sort()
    low = values[int((1 - level) / 2 * n)]
    high = values[min(n - 1, int((1 + level) / 2 * n))]
    return auroc(scores, labels), low, high


# `context_use` was this function's name; `ni.context_use` is the view
__getattr__ = renamed_function(__name__, "context_use", compute_context_use)
