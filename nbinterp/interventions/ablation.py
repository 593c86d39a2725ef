"""What the ablation panel shows, as plain data: the canonical form of an
ablation dict, one ablated run summarised (top-k next tokens with their
probabilities before and after, the logit difference), and the exact
`model.run(...)` call that reproduces it."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

from nbinterp.errors import NbinterpError
from nbinterp.engine.tokens import display_text

if TYPE_CHECKING:
    from nbinterp.engine.model import Model
    from nbinterp.engine.run import Run

ABLATION_MODES = ("zero", "mean")


def component_key(layer: int, head: int | str) -> str:
    return f"L{layer}.mlp" if head == "mlp" else f"L{layer}.H{head}"


def canonical_ablations(model: "Model", ablations: Any) -> dict[str, float]:
    """{(3, 1): 0, "l2.MLP": 0.5, "L0.H0": 1.0} -> {"L2.mlp": 0.5, "L3.H1": 0.0}.

    Keys become "L3.H1" / "L2.mlp" (checked against the model), values
    floats; a scale of exactly 1 changes nothing and is dropped. Sorted by
    layer, heads before the MLP."""
    if not isinstance(ablations, dict):
        raise NbinterpError("ablations is a dict like {'L3.H1': 0.0, 'L2.mlp': 0.5} (scale 0 removes, 1 keeps)")
    parsed: dict[tuple[int, float], tuple[str, float]] = {}
    for key, value in ablations.items():
        layer, head = model.parse_component(key)
        name = component_key(layer, head)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise NbinterpError(f"the scale of {name} must be a finite number (0 = ablate, 1 = unchanged), got {value!r}")
        order = (layer, math.inf if head == "mlp" else head)
        if float(value) != 1.0:
            parsed[order] = (name, float(value))
        else:
            parsed.pop(order, None)
    return dict(parsed[order] for order in sorted(parsed))


def ablation_code(prompt: str, ablations: dict[str, float], ablation: str = "zero",
                  reference: Sequence[str] | None = None, model_name: str = "model") -> str:
    """The `model.run(...)` call that reproduces an ablated run."""
    args = [repr(prompt)]
    if ablations:
        args.append(f"ablate={ablations!r}")
        if ablation != "zero":
            args.append(f"ablation={ablation!r}, reference={list(reference or [])!r}")
    return f"{model_name}.run({', '.join(args)})"


def ablated_run(model: "Model", prompt: Any, ablations: dict[str, float], ablation: str = "zero",
                reference: Sequence[str] | None = None, position: int = -1) -> "Run":
    """`model.run` with the ablations, reading only the logits (what the panel shows):
    the last position's, or every position's when the panel reads another one."""
    if ablation not in ABLATION_MODES:
        raise NbinterpError(f"ablation must be one of {ABLATION_MODES}, not {ablation!r}")
    mean = ablation == "mean" and ablations
    return model.run(prompt, ablate=ablations, ablation=ablation if mean else "zero",
                     reference=list(reference) if mean else None,
                     capture=() if position in (-1, model.tokenize(prompt).shape[1] - 1) else ("logits",))


@dataclass
class TokenProbability:
    token: str  # display text
    id: int
    probability: float  # in this run
    before: float  # in the run without ablations


@dataclass
class AblationSummary:
    ablations: dict[str, float]
    ablation: str
    top_k: list[TokenProbability]
    logit_diff: float | None  # logit(target) - logit(foil), or logit(target) without a foil
    target_probability: float | None
    foil_probability: float | None
    # The target's and foil's rows, before and after, whether or not they are in top_k.
    target: TokenProbability | None = None
    foil: TokenProbability | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(model: "Model", run: "Run", baseline: "Run | None", *, k: int = 10, target: Any = None,
              foil: Any = None, ablations: dict[str, float] | None = None, ablation: str = "zero",
              position: int = -1) -> AblationSummary:
    """Top-k next tokens of `run` at `position` (the last by default) with their probability in
    `baseline` too, and the target/foil numbers; the target and foil rows are
    there even when they fall out of the top k (an ablation that works pushes
    the target down, and that is the number to see)."""
    probabilities = run.probabilities(position)
    before = (baseline if baseline is not None else run).probabilities(position)
    values, ids = probabilities.topk(min(k, probabilities.numel()))
    ids_list = ids.tolist()
    texts = display_text(model.tokenizer, ids_list)
    top = [TokenProbability(t, i, float(p), float(before[i])) for t, i, p in zip(texts, ids_list, values.tolist())]
    target_id = None if target is None else model.token_id(target)
    foil_id = None if foil is None else model.token_id(foil)

    def row(token_id: int | None) -> TokenProbability | None:
        if token_id is None:
            return None
        return TokenProbability(display_text(model.tokenizer, [token_id])[0], token_id,
                                float(probabilities[token_id]), float(before[token_id]))

    return AblationSummary(
        ablations=dict(ablations or {}), ablation=ablation, top_k=top,
        logit_diff=None if target is None else run.logit_diff(target_id, foil_id, position),
        target_probability=None if target_id is None else float(probabilities[target_id]),
        foil_probability=None if foil_id is None else float(probabilities[foil_id]),
        target=row(target_id), foil=row(foil_id),
    )
