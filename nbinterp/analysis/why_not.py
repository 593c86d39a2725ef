"""Why did the model NOT say `expected`? Tied to the output and proven by restoring.

The metric throughout is logit(expected) - logit(actual) at the answer
position, where `actual` is what the model said instead. Four parts:

- trajectory: per layer (the logit lens at the answer position), the rank and
  probability of expected and actual, and the critical layer where actual
  overtakes expected for good;
- inhibitors: every head's and MLP's exact zero-ablation effect on the metric
  (batched forwards; a positive effect means the component pushes against
  expected), next to the gradient estimate of the same number (marked
  "estimated");
- missing: against references where the model DOES say expected (same token
  length), every component's difference at the answer position (output norm,
  attention to the relevant span) and its exact one-at-a-time restore: the
  share of the metric gap recovered by patching it in from the reference.
  Components are ranked by that measured restore, never by an estimate alone;
- restore(k): the top-k missing components patched in one at a time and all
  together (exact), the share of the gap each recovers.

Sign conventions follow the rest of nbinterp: an effect is
metric(intervened) - metric(clean).

Two stages, so a view can answer at once: `first_answer` is one forward, one
forward + backward (gradients and the lens trajectory) and one forward per
reference: every inhibitor and missing head ranked by its gradient estimate
(`measured` False, the estimate standing in, labelled "estimate"); then
`exact_steps` measures them in batches, largest estimate first, each batch
replacing estimates by exact numbers in place; `finish` sorts by the measured
numbers. `why_not` is the three in a row: the same exact numbers as measuring
everything at once (each value is the difference of two rows of one forward).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from nbinterp.engine.batch import measure
from nbinterp.engine.plan import Metric, Plan
from nbinterp.engine.tokens import display_text
from nbinterp.errors import NbinterpError
from nbinterp.interventions import batch
from nbinterp.vocabulary import renamed_function

if TYPE_CHECKING:
    from nbinterp.engine.model import Model
    from nbinterp.engine.run import Run

# A restore share below this (in absolute value) is labelled "restores nothing".
NOTHING_RESTORED = 0.05


@dataclass
class Trajectory:
    """Logit lens at the answer position: row 0 the embeddings, row l + 1 after block l."""

    row_labels: list[str]
    expected_rank: torch.Tensor  # long [layers + 1], 0 = top
    expected_probability: torch.Tensor  # float32 [layers + 1]
    actual_rank: torch.Tensor
    actual_probability: torch.Tensor
    critical_layer: int | None  # first block after which actual stays above expected; None if never

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"stream": label, "expected_rank": int(er), "expected_probability": float(ep),
             "actual_rank": int(ar), "actual_probability": float(ap)}
            for label, er, ep, ar, ap in zip(self.row_labels, self.expected_rank, self.expected_probability,
                                             self.actual_rank, self.actual_probability)
        ]


@dataclass
class Component:
    """One head ("L1.H3") or MLP ("L2.mlp")."""

    name: str
    layer: int
    head: int | None  # None for an MLP

    @property
    def kind(self) -> str:
        return "mlp" if self.head is None else "head"

    def patch_site(self, position: int) -> tuple:
        """The site as `model.run(patch=[...])` takes it."""
        if self.head is None:
            return ("mlp_out", self.layer, position)
        return ("head", self.layer, self.head, position)

    def batch_site(self, position: int) -> tuple:
        """The site as `batch.patched_metrics` takes it: (kind, layer, head or None, position)."""
        return ("mlp_out" if self.head is None else "head", self.layer, self.head, position)


@dataclass
class Inhibitor:
    component: Component
    effect: float  # metric(component zero-ablated) - metric(clean); > 0 = pushes against expected (see measured)
    estimate: float | None  # gradient x activation estimate of the same number (heads only)
    measured: bool = True  # False: `effect` is still the estimate (0.0 for an MLP), not yet measured

    @property
    def pushes(self) -> str:
        return "against expected" if self.effect > 0 else "for expected"


@dataclass
class Missing:
    component: Component
    norm_here: float  # output norm at the answer position
    norm_reference: float  # mean over references
    attention_here: float | None  # heads: attention from the answer position to the relevant span
    attention_reference: float | None
    restore_share: float  # share of the gap recovered by patching it alone (mean over references; see measured)
    estimate: float | None  # first-order estimate of that share (heads only), for comparison
    measured: bool = True  # False: `restore_share` is still the estimate (0.0 for an MLP), not yet measured

    @property
    def restores_nothing(self) -> bool:
        return abs(self.restore_share) < NOTHING_RESTORED

    @property
    def label(self) -> str:
        if not self.measured:
            return "estimate"
        return "restores nothing" if self.restores_nothing else "restores"


@dataclass
class Restore:
    """Exact patching of the top-k missing components from each reference."""

    components: list[Component]
    single_shares: list[float]  # one at a time, mean over references
    together_share: float  # all k together, mean over references
    metric_here: float
    metric_reference: list[float]
    single_metrics: list[list[float]]  # [reference][component]
    together_metrics: list[float]  # [reference]
    labels: list[str] = field(default_factory=list)


@dataclass
class WhyNot:
    tokens: list[str]
    expected: str
    actual: str
    position: int
    metric: float  # logit(expected) - logit(actual) here (negative: actual wins)
    trajectory: Trajectory
    inhibitors: list[Inhibitor]  # sorted, strongest push against expected first
    missing: list[Missing]  # sorted by measured restore share, [] without references
    span: list[int]  # the relevant positions attention is measured to
    reference_metrics: list[float]
    _context: dict = field(default_factory=dict, repr=False)

    def restore(self, k: int = 5) -> Restore:
        """Patch the top-k missing components in from the references (exact, one batched forward each)."""
        if not self.missing:
            raise NbinterpError("restore needs references: ni.why_not(..., references=[a prompt where the model says the target])")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise NbinterpError(f"k must be a positive integer, not {k!r}")
        if not all(m.measured for m in self.missing):
            raise NbinterpError("the restore shares are still being measured: wait for them (wn.wait()) before restore(k)")
        ctx = self._context
        chosen = [m.component for m in self.missing[:k]]
        sites = [[c.batch_site(self.position)] for c in chosen]
        sets = sites + [[s[0] for s in sites]]
        single, together = [], []
        for run in ctx["reference_runs"]:
            values = batch.patched_metrics(ctx["model"], ctx["input_ids"], run, sets, ctx["metric"],
                                           base=ctx["run"]).double()
            single.append(values[:-1].tolist())
            together.append(float(values[-1]))
        gaps = [ref - self.metric for ref in self.reference_metrics]
        single_shares = [sum((s[i] - self.metric) / g for s, g in zip(single, gaps)) / len(gaps) for i in range(len(chosen))]
        together_share = sum((t - self.metric) / g for t, g in zip(together, gaps)) / len(gaps)
        labels = ["restores nothing" if abs(s) < NOTHING_RESTORED else "restores" for s in single_shares]
        return Restore(chosen, single_shares, together_share, self.metric, list(self.reference_metrics),
                       single, together, labels)


# ------------------------------------------------------------------ helpers
def contrast(prompt: str, span: str | tuple[int, int], replacement: str, model: "Model | None" = None) -> str:
    """`prompt` with one span swapped for `replacement`: a reference of the same token length.

    `span` is a substring of the prompt (its first occurrence) or (start, end)
    character offsets. With `model`, the token lengths are checked.
    e.g. contrast(p, "the capital of Elvaria is Vesk .", "the old tree near the road .")
    """
    if isinstance(span, str):
        start = prompt.find(span)
        if start < 0:
            raise NbinterpError(f"{span!r} does not occur in the prompt")
        end = start + len(span)
    else:
        start, end = span
        if not (0 <= start <= end <= len(prompt)):
            raise NbinterpError(f"span {span!r} lies outside the prompt's {len(prompt)} characters")
    result = prompt[:start] + replacement + prompt[end:]
    if model is not None:
        a, b = model.tokenize(prompt).shape[1], model.tokenize(result).shape[1]
        if a != b:
            raise NbinterpError(
                f"the replacement changes the token length ({a} -> {b}): use {prompt[start:end]!r}'s token count"
            )
    return result


def components(model: "Model") -> list[Component]:
    out = []
    for layer in range(model.n_layers):
        out += [Component(f"L{layer}.H{head}", layer, head) for head in range(model.n_heads)]
        out.append(Component(f"L{layer}.mlp", layer, None))
    return out


def gradient_run(model: "Model", input_ids: torch.Tensor, metric: Metric) -> "Run":
    """One forward + backward: the metric's gradients (the head estimates) and, in
    the same trace, the logit lens of every residual stream with the metric's
    target's and foil's probability and rank, reduced where the model lives (the
    final norm and unembedding are never applied on the client)."""
    from nbinterp.engine.run import Run

    tokens = (metric.target,) if metric.foil is None else (metric.target, metric.foil)
    # the lens at the metric's position only: the trajectory reads nothing else, and every
    # position's full-vocabulary lens would cost several forwards at long prompts
    saved = model.execute(input_ids, Plan(), model.all_layers(["z", "lens"]), metric, gradients=True,
                          lens_tokens=tokens, lens_positions=(metric.position,))
    description = {"target": metric.target, "foil": metric.foil, "gradients": True}
    return Run(model, input_ids, Plan(), saved, metric, description)


def lens_at(run: "Run") -> tuple[torch.Tensor, torch.Tensor]:
    """(rank [streams, n], probability [streams, n]) of the tokens the `gradient_run`'s
    lens was asked for, at its one position, every residual stream (embeddings, after each block)."""
    streams = [run.captured("lens", layer) for layer in range(run.model.n_layers + 1)]
    return (torch.stack([s.token_ranks[0] for s in streams]),
            torch.stack([s.token_probabilities[0] for s in streams]))


def critical_layer(expected_rank: torch.Tensor, actual_rank: torch.Tensor) -> int | None:
    """The block after which actual ranks above expected in every later stream: -1 when it
    already does in the embeddings, None when expected ends on top."""
    ahead = (actual_rank < expected_rank).tolist()
    if not ahead[-1]:
        return None
    row = len(ahead) - 1
    while row > 0 and ahead[row - 1]:
        row -= 1
    return row - 1  # stream row r is the stream after block r - 1


def answer_span(model: "Model", ids: list[int], expected_id: int, references: list[list[int]], position: int) -> list[int]:
    """Default relevant span: where the expected token occurs before the answer, else where references differ."""
    span = [i for i, t in enumerate(ids[:position]) if t == expected_id]
    if not span:
        span = sorted({i for ref in references for i, (a, b) in enumerate(zip(ids, ref)) if a != b and i < position})
    return span


# ------------------------------------------------------------------ the analysis
def compute_why_not(
    model: "Model", prompt: Any, expected: str | int, references: Sequence[Any] = (),
    actual: str | int | None = None, position: int = -1, span: Sequence[int] | tuple[int, int] | None = None,
) -> WhyNot:
    """Why `prompt` does not give `expected`, every number measured; see the module docstring."""
    result = first_answer(model, prompt, expected, references, actual, position, span)
    for _ in exact_steps(result):
        pass
    return result


def first_answer(
    model: "Model", prompt: Any, expected: str | int, references: Sequence[Any] = (),
    actual: str | int | None = None, position: int = -1, span: Sequence[int] | tuple[int, int] | None = None,
) -> WhyNot:
    """The trajectory and every component ranked by its gradient estimate (nothing
    measured yet: `exact_steps` measures them)."""
    input_ids = model.tokenize(prompt)
    n_tokens = input_ids.shape[1]
    if not -n_tokens <= position < n_tokens:
        raise NbinterpError(f"position {position} is outside the prompt's 0..{n_tokens - 1}")
    position %= n_tokens
    expected_id = model.token_id(expected)
    tokenizer = model.tokenizer
    # resid_pre and qkv too: exact measurements start from this run where they change nothing before.
    # Every position's logits only when the answer is not at the last (unembedding all T positions
    # of a 49k vocabulary costs a third of a forward).
    all_logits = [] if position == n_tokens - 1 else ["logits"]
    run = model.run(input_ids, capture=["z", "w_o", "qkv", "mlp_out", "resid_pre", *all_logits])
    logits = run.logits_at(position)
    if actual is None:
        order = logits.argsort(descending=True).tolist()
        actual_id = order[0] if order[0] != expected_id else order[1]
    else:
        actual_id = model.token_id(actual)
        if actual_id == expected_id:
            raise NbinterpError("actual and expected are the same token")
    expected_text, actual_text = display_text(tokenizer, [expected_id, actual_id])
    metric = Metric(expected_id, actual_id, position)
    metric_here = float(logits[expected_id] - logits[actual_id])

    # one forward + backward: the head estimates' gradients and the lens trajectory
    grad_run = gradient_run(model, input_ids, metric)
    ranks, probabilities = lens_at(grad_run)
    trajectory = Trajectory(
        ["embed"] + [f"L{layer}" for layer in range(model.n_layers)],
        ranks[:, 0], probabilities[:, 0].float(), ranks[:, 1], probabilities[:, 1].float(),
        critical_layer(ranks[:, 0], ranks[:, 1]),
    )

    parts = components(model)
    estimates = grad_run.head_attribution()
    inhibitors = [
        Inhibitor(c, 0.0 if c.head is None else float(estimates[c.layer, c.head]),
                  None if c.head is None else float(estimates[c.layer, c.head]), measured=False)
        for c in parts
    ]
    inhibitors.sort(key=lambda i: -i.effect)

    # Missing: against references that do say expected.
    reference_ids = [model.tokenize(r) for r in references]
    for n, ids in enumerate(reference_ids):
        if ids.shape[1] != n_tokens:
            raise NbinterpError(
                f"reference {n} has {ids.shape[1]} tokens, the prompt {n_tokens}: build one of equal length, "
                "e.g. nbinterp.analysis.why_not.contrast(prompt, span, replacement)"
            )
    if span is None:
        span_positions = answer_span(model, input_ids[0].tolist(), expected_id, [r[0].tolist() for r in reference_ids], position)
    elif isinstance(span, tuple) and len(span) == 2:
        span_positions = list(range(*span))
    else:
        span_positions = sorted(int(p) for p in span)
    if any(not 0 <= p < n_tokens for p in span_positions):
        raise NbinterpError(f"span {span!r} lies outside the prompt's 0..{n_tokens - 1}")

    reference_runs, reference_metrics = [], []
    for n, ids in enumerate(reference_ids):
        ref = model.run(ids, capture=["z", "w_o", "qkv", "mlp_out", "resid_pre", "attn_out", *all_logits])
        ref_logits = ref.logits_at(position)
        said = int(ref_logits.argmax())
        if said != expected_id:
            raise NbinterpError(
                f"reference {n} answers {tokenizer.decode([said])!r}, not {expected_text!r}: a reference must be a "
                "prompt where the model does give the expected answer"
            )
        reference_runs.append(ref)
        reference_metrics.append(float(ref_logits[expected_id] - ref_logits[actual_id]))

    missing: list[Missing] = []
    if reference_runs:
        for ref_metric in reference_metrics:
            if ref_metric - metric_here <= 0:
                raise NbinterpError(
                    f"a reference's logit({metric.target}) - logit({metric.foil}) is {ref_metric:.3f}, not above "
                    f"this prompt's {metric_here:.3f}: nothing to restore"
                )
        missing = missing_estimates(model, run, grad_run, reference_runs, reference_metrics, metric_here, position,
                                    span_positions, parts)

    return WhyNot(
        tokens=display_text(tokenizer, input_ids[0].tolist()), expected=expected_text, actual=actual_text,
        position=position, metric=metric_here, trajectory=trajectory, inhibitors=inhibitors, missing=missing,
        span=span_positions, reference_metrics=reference_metrics,
        _context={"model": model, "input_ids": input_ids, "metric": metric, "reference_runs": reference_runs,
                  "run": run},
    )


def missing_estimates(model, run, grad_run, reference_runs, reference_metrics, metric_here, position, span,
                      parts) -> list[Missing]:
    """Every component's norms and attention here and in the references, and for heads the
    first-order estimate of its restore share; the share itself is not measured yet."""
    n = len(reference_runs)
    out = []
    for layer in range(model.n_layers):
        # each run's per-layer tensors once (not once per head)
        outputs_here = run.head_outputs(layer)[:, position]
        grads = grad_run.grad_head_outputs(layer)[:, position]
        attention_here = run.attention(layer)[:, position, span].sum(-1)
        outputs_ref = [r.head_outputs(layer)[:, position] for r in reference_runs]
        attention_ref = [r.attention(layer)[:, position, span].sum(-1) for r in reference_runs]
        for c in (p for p in parts if p.layer == layer):
            if c.head is None:
                here = float(run.mlp_out(layer)[position].norm())
                there = sum(float(r.mlp_out(layer)[position].norm()) for r in reference_runs) / n
                out.append(Missing(c, here, there, None, None, 0.0, None, measured=False))
                continue
            h = c.head
            estimate = sum(float((o[h] - outputs_here[h]) @ grads[h]) / (m - metric_here)
                           for o, m in zip(outputs_ref, reference_metrics)) / n
            out.append(Missing(c, float(outputs_here[h].norm()), sum(float(o[h].norm()) for o in outputs_ref) / n,
                               float(attention_here[h]), sum(float(a[h]) for a in attention_ref) / n,
                               estimate, estimate, measured=False))
    out.sort(key=lambda m: -m.restore_share)
    return out


def measuring_order(items: Sequence[Any]) -> list[Any]:
    """Largest |estimate| first; components without an estimate (MLPs) before all, having nothing to show."""
    return sorted(items, key=lambda i: -(abs(i.estimate) if i.estimate is not None else float("inf")))


def exact_steps(result: WhyNot) -> Iterator[dict[str, Any]]:
    """Measure every estimate of `result` exactly, one batched forward per step
    (per reference for restore shares), the missing components first, largest
    estimate first, then the inhibitors from the last layer down; each step writes its numbers into `result` and yields
    {"stage", "names", "done", "total"}. At the end both lists are sorted by the
    measured numbers."""
    ctx = result._context
    model, input_ids, metric = ctx["model"], ctx["input_ids"], ctx["metric"]
    per_forward = _rows(model, input_ids)
    missing = [m for m in measuring_order(result.missing) if not m.measured]
    # inhibitors ablate every token: from the last layer down, so each forward starts at one
    # layer (`engine.batch.measure` skips the blocks below): ~20% less work than mixing layers
    inhibitors = sorted((i for i in measuring_order(result.inhibitors) if not i.measured),
                        key=lambda i: -i.component.layer)
    batches = ([("missing", missing[i : i + per_forward]) for i in range(0, len(missing), per_forward)]
               + [("inhibitors", inhibitors[i : i + per_forward]) for i in range(0, len(inhibitors), per_forward)])
    done, total = 0, len(missing) + len(inhibitors)
    for stage, chunk in batches:
        if stage == "missing":
            sets = [[m.component.batch_site(result.position)] for m in chunk]
            shares = torch.zeros(len(chunk), dtype=torch.float64)
            for ref, ref_metric in zip(ctx["reference_runs"], result.reference_metrics):
                values = batch.patched_metrics(model, input_ids, ref, sets, metric, base=ctx["run"]).double()
                shares += (values - result.metric) / (ref_metric - result.metric) / len(ctx["reference_runs"])
            for m, share in zip(chunk, shares.tolist()):
                m.restore_share, m.measured = share, True
        else:
            heads = [i for i in chunk if i.component.head is not None]
            mlps = [i for i in chunk if i.component.head is None]
            if heads:
                effects = batch.ablation_effects(model, input_ids, [(i.component.layer, i.component.head) for i in heads],
                                                 metric, rows=len(heads) + 1, base=ctx["run"])
                for i, effect in zip(heads, effects.tolist()):
                    i.effect, i.measured = effect, True
            if mlps:
                layers = [i.component.layer for i in mlps]
                measured = measure(model, input_ids, layers, lambda plan, slot, layer: plan.scale_mlp(slot, layer, 0.0),
                                   metric, rows=len(layers) + 1, base=ctx["run"], start=lambda layer: (layer, 0))
                for i, effect in zip(mlps, measured.effects[:, 0].tolist()):
                    i.effect, i.measured = effect, True
        done += len(chunk)
        if done == total:
            result.missing.sort(key=lambda m: -m.restore_share)
            result.inhibitors.sort(key=lambda i: -i.effect)
        yield {"stage": stage, "names": [x.component.name for x in chunk], "done": done, "total": total}


def _rows(model: "Model", input_ids: torch.Tensor) -> int:
    """Patch sets per forward: what fits, less the clean row each forward carries."""
    return max(1, batch.batch_rows(model, input_ids.shape[1]) - 1)


# `why_not` was this function's name; `ni.why_not` is the view
__getattr__ = renamed_function(__name__, "why_not", compute_why_not)
