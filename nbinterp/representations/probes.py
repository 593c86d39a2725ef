"""Linear probes on the residual stream: is an attribute of the prompt
linearly readable at each layer?

One probe per residual stream (the stream entering each block, "L0" ..,
and the final norm's input, "final"), each an L2-regularised logistic
regression fitted in torch on a seeded, stratified train split and scored on
the held-out rest. Every stream of every prompt comes from one batched
forward through the engine (a few, for many prompts).

Decodable is not the same as used: `nbinterp.representations.probe_usage` removes a
probe's direction from the stream and measures what the output does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Hashable, Sequence

import torch

from nbinterp.engine.tokens import display_token
from nbinterp.errors import NbinterpError

if TYPE_CHECKING:
    from nbinterp.engine.model import Model

# Largest float32 element count of one batch's captured streams (~64 MB).
ELEMENT_BUDGET = 1 << 24
DEFAULT_L2 = 1e-2


def stream_labels(model: "Model") -> list[str]:
    """"L0" .. "L{n-1}" (the stream entering that block) and "final" (the final norm's input)."""
    return [f"L{layer}" for layer in range(model.n_layers)] + ["final"]


def stream_site(model: "Model", layer: int) -> tuple[str, int]:
    """The engine's edit site of probe layer `layer` (0 .. n_layers, n_layers = final)."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= model.n_layers:
        raise NbinterpError(
            f"probe layer {layer!r} is out of range: probes sit on streams 0..{model.n_layers} "
            f"(L0..L{model.n_layers - 1} enter each block, {model.n_layers} is the final stream)"
        )
    return ("resid_pre", layer) if layer < model.n_layers else ("resid_final", model.n_layers)


# ------------------------------------------------------------------ inputs
def tokenize_prompts(model: "Model", prompts: Sequence[Any]) -> list[torch.Tensor]:
    """Each prompt's ids [T]; an error naming the first prompt that can't be used."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise NbinterpError("prompts must be a non-empty list of strings, e.g. [e.prompt for e in examples]")
    ids = []
    for index, prompt in enumerate(prompts):
        try:
            ids.append(model.tokenize(prompt)[0])
        except NbinterpError as exc:
            shown = repr(prompt) if len(repr(prompt)) <= 70 else repr(prompt)[:67] + "..."
            raise NbinterpError(f"prompt {index} {shown} can't be probed: {exc}") from None
    return ids


def encode_labels(labels: Sequence[Hashable], n_prompts: int) -> tuple[list[Hashable], list[Hashable], torch.Tensor]:
    """(the labels as a list, classes in sorted order, class index per prompt), checked."""
    if hasattr(labels, "tolist") and not isinstance(labels, (str, bytes)):
        labels = labels.tolist()  # a numpy array or a tensor of labels
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
        raise NbinterpError("labels must be a list with one label per prompt, e.g. [e.meta['group'] for e in examples]")
    if len(labels) != n_prompts:
        raise NbinterpError(f"labels has {len(labels)} entries but there are {n_prompts} prompts: give one label per prompt")
    try:
        classes = sorted(set(labels), key=lambda c: (str(type(c)), c))
    except TypeError as exc:
        raise NbinterpError(f"labels must be hashable and comparable (strings, ints, bools): {exc}") from None
    if len(classes) < 2:
        raise NbinterpError(f"every label is {classes[0]!r}: a probe needs at least two classes to tell apart")
    counts = {c: 0 for c in classes}
    for label in labels:
        counts[label] += 1
    scarce = [c for c, n in counts.items() if n < 2]
    if scarce:
        raise NbinterpError(f"class {scarce[0]!r} has one prompt: each class needs at least 2 (one to train on, one held out)")
    index = {c: i for i, c in enumerate(classes)}
    return list(labels), classes, torch.tensor([index[label] for label in labels])


def split_indices(y: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified seeded split: (train, test) row indices, every class in both."""
    if not 0.0 < test_fraction < 1.0:
        raise NbinterpError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    generator = torch.Generator().manual_seed(int(seed))
    train, test = [], []
    for c in range(int(y.max()) + 1):
        rows = torch.nonzero(y == c)[:, 0]
        rows = rows[torch.randperm(len(rows), generator=generator)]
        n_test = min(max(1, round(test_fraction * len(rows))), len(rows) - 1)
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def resolve_offsets(lengths: Sequence[int], position: Any, all_positions: bool) -> list[int]:
    """Positions to read, as offsets into each prompt (negative: from its end).

    `all_positions` aligns the prompts at their ends: offsets -P .. -1 with P
    the shortest prompt's length (the last column is every prompt's last token)."""
    shortest = min(lengths)
    if all_positions:
        return list(range(-shortest, 0))
    if isinstance(position, bool) or not isinstance(position, int) or not -shortest <= position < shortest:
        raise NbinterpError(
            f"position {position!r} is not in every prompt (the shortest has {shortest} tokens): "
            f"use -1 for each prompt's last token, or 0..{shortest - 1} / -{shortest}..-1"
        )
    return [position]


# ------------------------------------------------------------------ capture
def capture_streams(model: "Model", token_ids: Sequence[torch.Tensor], offsets: Sequence[int]) -> torch.Tensor:
    """[streams, prompts, len(offsets), d_model] float32: every residual stream
    (resid_pre of each layer, then resid_final) at the given offsets, from
    batched forwards (right-padded, masked: causal attention never lets a real
    token see the padding after it)."""
    n_streams = model.n_layers + 1
    longest = max(len(ids) for ids in token_ids)
    rows_per_batch = max(1, ELEMENT_BUDGET // (n_streams * longest * model.d_model))
    capture = model.all_layers(["resid_pre", "resid_final"])
    out = torch.empty(n_streams, len(token_ids), len(offsets), model.d_model)
    for start in range(0, len(token_ids), rows_per_batch):
        chunk = token_ids[start : start + rows_per_batch]
        saved, _ = model.capture_batch(chunk, capture)
        streams = [saved["resid_pre"][layer] for layer in range(model.n_layers)] + [saved["resid_final"][model.n_layers]]
        lengths = torch.tensor([len(ids) for ids in chunk])
        rows = torch.arange(len(chunk))
        for column, offset in enumerate(offsets):
            where = lengths + offset if offset < 0 else torch.full_like(lengths, offset)
            for s, stream in enumerate(streams):
                out[s, start : start + len(chunk), column] = stream[rows, where].float()
    return out


# ------------------------------------------------------------------ the probe
@dataclass
class LinearProbe:
    """logits = weight @ ((x - mean) / scale) + bias; one logit (binary, for
    classes[1]) or one per class."""

    weight: torch.Tensor  # [1 or K, d] float64, on standardised inputs
    bias: torch.Tensor  # [1 or K]
    mean: torch.Tensor  # [d]
    scale: torch.Tensor  # [d]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) / self.scale) @ self.weight.T + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits(x)
        return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(-1)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float((self.predict(x) == y).double().mean())

    def direction(self, label_index: int | None = None) -> torch.Tensor:
        """The unit direction in the stream the probe reads, float32 [d]: its
        weight in activation space (weight / scale). Binary: towards classes[1];
        multi-class: towards class `label_index` and away from the others."""
        weight = self.weight[0] if self.weight.shape[0] == 1 else self.weight[label_index] - self.weight.mean(0)
        raw = weight / self.scale
        return (raw / raw.norm()).float()


def standardiser(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and spread per feature; a feature constant over the train rows keeps spread 1."""
    x = x.double()
    mean, std = x.mean(0), x.std(0, correction=0)
    return mean, torch.where(std > 1e-6 * (std.max() + 1e-12), std, torch.ones_like(std))


def probe_loss(weight: torch.Tensor, bias: torch.Tensor, z: torch.Tensor, y: torch.Tensor, l2: float) -> torch.Tensor:
    """Mean cross-entropy + l2/2 |weight|^2 (the objective every probe minimises)."""
    logits = z @ weight.T + bias
    if weight.shape[0] == 1:
        data = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y.double())
    else:
        data = torch.nn.functional.cross_entropy(logits, y)
    return data + 0.5 * l2 * weight.pow(2).sum()


def fit_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float = DEFAULT_L2) -> LinearProbe:
    """Logistic regression (softmax for more than two classes) by L-BFGS in
    float64; strictly convex with l2 > 0, so the optimum is unique."""
    mean, scale = standardiser(x)
    z = (x.double() - mean) / scale
    outputs = 1 if n_classes == 2 else n_classes
    weight = torch.zeros(outputs, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(outputs, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=500, tolerance_grad=1e-10,
                                  tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = probe_loss(weight, bias, z, y, l2)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return LinearProbe(weight.detach(), bias.detach(), mean, scale)


# ------------------------------------------------------------------ per layer
@dataclass
class ProbeResult:
    """Probes on every residual stream of a labelled prompt set."""

    prompts: list[Any]
    labels: list[Hashable]
    classes: list[Hashable]
    y: torch.Tensor  # class index per prompt
    token_ids: list[torch.Tensor]
    train_index: torch.Tensor
    test_index: torch.Tensor
    stream_labels: list[str]  # "L0" .. "final"
    position: int  # the offset the probes read (-1: each prompt's last token)
    probes: list[LinearProbe]  # one per stream
    streams: torch.Tensor  # [streams, prompts, d] float32 at `position`
    train_accuracy: torch.Tensor  # [streams] float64
    test_accuracy: torch.Tensor  # [streams] float64, held-out
    chance: float  # held-out accuracy of always guessing the train split's most common class
    l2: float
    seed: int
    position_accuracy: torch.Tensor | None = None  # [streams, P] held-out, end-aligned offsets
    position_offsets: list[int] | None = None
    position_tokens: list[str] | None = None  # the token at each offset where all prompts share it, else ""

    @property
    def best_layer(self) -> int:
        """The stream with the highest held-out accuracy (the earliest on a tie)."""
        return int(torch.argmax(self.test_accuracy))

    def direction(self, layer: int, label: Hashable | None = None) -> torch.Tensor:
        """The probe's unit direction at `layer` (binary: towards classes[1])."""
        if not 0 <= layer < len(self.probes):
            raise NbinterpError(f"probe layer {layer!r} is out of range 0..{len(self.probes) - 1} ({', '.join(self.stream_labels)})")
        return self.probes[layer].direction(self.label_index(label))

    def label_index(self, label: Hashable | None) -> int | None:
        """The class a multi-class direction points to (None for binary probes)."""
        if len(self.classes) == 2:
            return None
        if label not in self.classes:
            raise NbinterpError(f"a probe of {len(self.classes)} classes has one direction per class: pass label= one of {self.classes}")
        return self.classes.index(label)


def probe_layers(
    model: "Model",
    prompts: Sequence[Any],
    labels: Sequence[Hashable],
    *,
    position: int = -1,
    all_positions: bool = False,
    test_fraction: float = 0.3,
    seed: int = 0,
    l2: float = DEFAULT_L2,
) -> ProbeResult:
    """A probe per residual stream at `position` (default each prompt's last
    token); with `all_positions`, also the held-out accuracy at every
    end-aligned position. One batched capture for everything."""
    token_ids = tokenize_prompts(model, prompts)
    labels, classes, y = encode_labels(labels, len(token_ids))
    if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not l2 > 0:
        raise NbinterpError(f"l2 must be a positive number (the regularisation strength), got {l2!r}")
    train, test = split_indices(y, test_fraction, seed)
    lengths = [len(ids) for ids in token_ids]
    offsets = resolve_offsets(lengths, position, False)
    all_offsets = resolve_offsets(lengths, position, True) if all_positions else []
    columns = list(dict.fromkeys(offsets + all_offsets))
    with model.lock:
        captured = capture_streams(model, token_ids, columns)
    at_position = captured[:, :, columns.index(offsets[0])]
    probes, train_acc, test_acc = [], [], []
    for stream in at_position:
        probe = fit_probe(stream[train], y[train], len(classes), l2)
        probes.append(probe)
        train_acc.append(probe.accuracy(stream[train], y[train]))
        test_acc.append(probe.accuracy(stream[test], y[test]))
    majority = int(torch.bincount(y[train]).argmax())
    result = ProbeResult(
        prompts=list(prompts), labels=list(labels), classes=classes, y=y, token_ids=token_ids,
        train_index=train, test_index=test, stream_labels=stream_labels(model), position=offsets[0],
        probes=probes, streams=at_position, train_accuracy=torch.tensor(train_acc, dtype=torch.float64),
        test_accuracy=torch.tensor(test_acc, dtype=torch.float64),
        chance=float((y[test] == majority).double().mean()), l2=float(l2), seed=int(seed),
    )
    if all_positions:
        grid = torch.empty(len(probes), len(all_offsets), dtype=torch.float64)
        for column, offset in enumerate(all_offsets):
            for s in range(len(probes)):
                stream = captured[s, :, columns.index(offset)]
                grid[s, column] = fit_probe(stream[train], y[train], len(classes), l2).accuracy(stream[test], y[test])
        result.position_accuracy = grid
        result.position_offsets = all_offsets
        result.position_tokens = shared_tokens(model, token_ids, all_offsets)
    return result


def shared_tokens(model: "Model", token_ids: Sequence[torch.Tensor], offsets: Sequence[int]) -> list[str]:
    """The token at each end-aligned offset where every prompt has the same one, else ""."""
    shown = []
    for offset in offsets:
        ids = {int(ids[offset]) for ids in token_ids}
        shown.append(display_token(model.tokenizer, ids.pop()) if len(ids) == 1 else "")
    return shown
