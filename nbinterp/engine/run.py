"""A captured forward pass: tokens, logits and per-layer tensors, with the
derived views (attention probabilities, per-head outputs, value-weighted
norms) computed lazily, one layer at a time."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import torch

from nbinterp.engine import attention_math
from nbinterp.engine.plan import Metric, Plan, check_position
from nbinterp.errors import NbinterpError

if TYPE_CHECKING:
    from nbinterp.engine.model import Model


ATTENTION_CACHE_LAYERS = 4


class Run:
    """The result of `Model.run`. Never mutated by later runs."""

    def __init__(
        self,
        model: "Model",
        input_ids: torch.Tensor,
        plan: Plan,
        captured: dict[str, Any],
        metric: Metric | None,
        description: dict[str, Any],
    ) -> None:
        self.model = model
        self.input_ids = input_ids  # [1, T]
        self.plan = plan
        self._captured = captured
        self._metric = metric
        self.interventions = description  # the user's arguments, for display / "copy as code"
        # A few recently used layers' probabilities; all of them at 12 x 12 heads
        # and 1,024 tokens would hold 600 MB.
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    # ------------------------------------------------------------------ basics
    @property
    def token_ids(self) -> list[int]:
        return self.input_ids[0].tolist()

    @property
    def tokens(self) -> list[str]:
        """The prompt as the tokenizer splits it."""
        return self.model.tokenizer.convert_ids_to_tokens(self.token_ids)

    @property
    def logits(self) -> torch.Tensor:
        """[T, vocab] float32: every position's logits (fetched with one more
        forward unless the run was made with capture=["logits"])."""
        if "logits" not in self._captured:
            fetched = self.model.execute(self.input_ids, self.plan, {}, logits="all")
            self._captured["logits"] = fetched["logits"]
        return self._captured["logits"]

    def logits_at(self, position: int = -1) -> torch.Tensor:
        """[vocab] float32 logits at one position (the last one is always at hand)."""
        position = check_position(position, len(self))
        if position == len(self) - 1 and "last_logits" in self._captured:
            return self._captured["last_logits"]
        return self.logits[position]

    def __len__(self) -> int:
        return self.input_ids.shape[1]

    def probabilities(self, position: int = -1) -> torch.Tensor:
        """Next-token distribution [vocab] at `position`."""
        return torch.softmax(self.logits_at(position), dim=-1)

    def top_tokens(self, k: int = 10, position: int = -1) -> list[tuple[str, float]]:
        """The k most likely next tokens with their probabilities."""
        probs = self.probabilities(position)
        values, ids = probs.topk(min(k, probs.numel()))
        return list(zip(self.model.tokenizer.convert_ids_to_tokens(ids.tolist()), values.tolist()))

    def logit_diff(self, target: str | int, foil: str | int | None = None, position: int = -1) -> float:
        """logit(target) - logit(foil) (or logit(target)) at `position`."""
        row = self.logits_at(position)
        value = row[self.model.token_id(target)]
        if foil is not None:
            value = value - row[self.model.token_id(foil)]
        return float(value)

    # ------------------------------------------------------------ per layer
    def _layer(self, layer: int) -> int:
        return self.model.check_layer(layer)

    def fetch(self, *names: str, layers: dict[str, Any] | None = None) -> "Run":
        """Capture `names` (see `nbinterp.engine.trace.CAPTURES`) for every layer, or
        for `layers[name]` where given, in ONE forward for everything this run does
        not hold yet. Returns the run."""
        names = self.model.capture_names(names)
        if "logits" in names:
            self.logits  # noqa: B018 - fetches every position's logits
        wanted = self.model.all_layers(n for n in names if n != "logits")
        for name, chosen in (layers or {}).items():
            wanted[name] = {chosen} if isinstance(chosen, int) else set(chosen)
        missing = {n: chosen - set(self._captured.get(n, {})) for n, chosen in wanted.items()}
        missing = {n: chosen for n, chosen in missing.items() if chosen}
        if missing:
            # Re-run the same request (same plan, same input): a remote run sends
            # back only what is asked for, and each layer fetched alone would cost
            # a forward per layer.
            fetched = self.model.execute(self.input_ids, self.plan, missing, logits="none")
            for name in missing:
                self._captured.setdefault(name, {}).update(fetched[name])
        return self

    def _fetch_together(self, layer: int, *names: str) -> None:
        """When `layer` lacks any of `names`, fetch them all for every layer in one forward."""
        if any(self._layer(layer) not in self._captured.get(name, {}) for name in names):
            self.fetch(*names)

    def captured(self, name: str, layer: int) -> Any:
        """One layer's capture (`nbinterp.engine.trace.CAPTURES`), fetched for every layer if missing."""
        if name in ("embed", "rotary"):
            layer = 0
        elif name == "resid_final":
            layer = self.model.n_layers
        elif name != "lens" or layer != self.model.n_layers:
            layer = self._layer(layer)
        store = self._captured.get(name, {})
        if layer not in store:
            self.fetch(name, layers={name: layer} if name == "qk_weights" else None)
            store = self._captured[name]
        return store[layer]

    def attention(self, layer: int) -> torch.Tensor:
        """[heads, T, T] attention probabilities (after any knockout in this run)."""
        layer = self._layer(layer)
        if layer in self._cache:
            self._cache.move_to_end(layer)
        else:
            self._cache[layer] = self._attention(layer, scores=False)
            if len(self._cache) > ATTENTION_CACHE_LAYERS:
                self._cache.popitem(last=False)
        return self._cache[layer]

    def attention_scores(self, layer: int) -> torch.Tensor:
        """[heads, T, T] pre-softmax scores, masked (-inf above the diagonal)."""
        return self._attention(layer, scores=True)

    def _attention(self, layer: int, scores: bool) -> torch.Tensor:
        inputs = self.captured("qkv", layer)
        args = (
            inputs.query[None], inputs.key[None], None if inputs.mask is None else inputs.mask[None],
            inputs.scaling or inputs.query.shape[-1] ** -0.5, inputs.softcap, inputs.sliding_window,
        )
        if scores:
            return attention_math.attention_scores(*args)[0]
        knock = self.plan.knockout.get(self._layer(layer))
        return attention_math.attention_probabilities(*args, knockout=knock)[0]

    def output_weight(self, layer: int) -> torch.Tensor:
        """[heads, head_dim, d_model] float32: the output projection of `layer` split per head."""
        weight = self.captured("w_o", layer).weight
        return attention_math.per_head_output_weight(weight.float(), self.model.n_heads, self.model.arch.conv1d_out_proj)

    def output_bias(self, layer: int) -> torch.Tensor | None:
        """[d_model]: the output projection's bias of `layer` (None without one)."""
        bias = self.captured("w_o", layer).bias
        return None if bias is None else bias.float()

    def head_outputs(self, layer: int) -> torch.Tensor:
        """[heads, T, d_model]: each head's write to the residual stream (bias excluded)."""
        self._fetch_together(layer, "z", "w_o")
        return attention_math.head_outputs(self.captured("z", layer).float(), self.output_weight(layer))

    def value_weighted(self, layer: int) -> torch.Tensor:
        """[heads, T, T]: ||a_ij v_j W_O^h||, what each head moves from key j to query i."""
        self._fetch_together(layer, "qkv", "w_o")
        value = self.captured("qkv", layer).value
        return attention_math.value_weighted_norms(self.attention(layer), value.float(), self.output_weight(layer))

    def residual(self, layer: int) -> torch.Tensor:
        """[T, d_model]: the residual stream entering block `layer`."""
        return self.captured("resid_pre", layer).float()

    def attention_out(self, layer: int) -> torch.Tensor:
        """[T, d_model]: the attention block's output (all heads, with bias)."""
        return self.captured("attn_out", layer).float()

    def mlp_out(self, layer: int) -> torch.Tensor:
        """[T, d_model]: the MLP's output."""
        return self.captured("mlp_out", layer).float()

    # ------------------------------------------------------------ gradients
    def _grads(self) -> dict[str, Any]:
        if self._metric is None:
            raise NbinterpError(
                "this run has no gradients: call model.run(prompt, target=..., foil=..., gradients=True)"
            )
        return self._captured

    @property
    def gradient_metric(self) -> Metric | None:
        """The metric this run's gradients are of (None without gradients)."""
        return self._metric

    @property
    def metric(self) -> float:
        """The value of the metric the gradients are of (logit diff at the position)."""
        return float(self._grads()["metric"])

    def grad_attention(self, layer: int) -> torch.Tensor:
        """[heads, T, T]: d metric / d attention probability.

        The attention output is a_i . v, so d metric / d a_ij = <d metric / d out_i, v_j>:
        computed here per layer from the gradient at the attention call's output and
        the values, so the trace never keeps probabilities of every layer for autograd."""
        grad_out = self._grads()["grad_attn"][self._layer(layer)]  # [T, H, D]
        value = self.captured("qkv", layer).value  # [H_kv, T, D]
        value = attention_math.repeat_kv(value[None].float(), grad_out.shape[1] // value.shape[0])[0]
        return torch.einsum("qhd,hkd->hqk", grad_out, value)

    def grad_head_outputs(self, layer: int) -> torch.Tensor:
        """[heads, T, d_model]: d metric / d (each head's write to the residual stream).

        A head's write enters the residual stream additively, so this equals the
        gradient at the output projection's output for every head; it is expanded
        per head for convenience (grad x head_outputs = each head's attribution).
        """
        grad_out = self._grads()["grad_out_proj"][self._layer(layer)]  # [T, d_model]
        return grad_out[None].expand(self.model.n_heads, -1, -1)

    def head_attribution(self) -> torch.Tensor:
        """[layers, heads]: gradient x activation estimate of each head's zero-ablation effect,
        ``-<d metric / d z_h, z_h>`` summed over positions.

        Sign convention (everywhere in nbinterp): an effect is metric(intervened) -
        metric(clean), so a negative number means the head helps the target."""
        grads = self._grads()["grad_z"]
        n_heads = self.model.n_heads
        rows = []
        for layer in range(self.model.n_layers):
            z = self.captured("z", layer).float()
            product = (grads[layer] * z).reshape(z.shape[0], n_heads, -1)
            rows.append(-product.sum(dim=(0, 2)))
        return torch.stack(rows)

    def __repr__(self) -> str:
        shown = " ".join(self.tokens[:12]) + (" ..." if len(self) > 12 else "")
        top = ", ".join(f"{t!r} {p:.2f}" for t, p in self.top_tokens(3))
        return f"<Run {self.model.name}: {len(self)} tokens [{shown}] -> {top}>"
