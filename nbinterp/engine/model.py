"""`Model`: one API over an nnsight-wrapped causal LM, local or remote.

`model.run(prompt, ...)` runs one forward pass through nnsight with the
requested interventions and returns a `Run`; the model itself is never changed.
"""

from __future__ import annotations

import numbers
import threading
from typing import Any, Iterable, Sequence

import torch

from nbinterp.engine.architectures import Architecture, ModelShape, architecture_for, get_path, read_shape
from nbinterp.errors import NbinterpError
from nbinterp.vocabulary import BUNDLED_MODEL_NAME
from nbinterp.engine import plan as plans
from nbinterp.engine.plan import Metric, Plan
from nbinterp.engine.captures import typed
from nbinterp.engine.trace import CAPTURES, TraceRequest, execute
from nbinterp.engine.resume import trim
from nbinterp.engine.patch_plan import build_patch
from nbinterp.engine.run import Run

Prompt = "str | Sequence[int] | torch.Tensor"
REFERENCE_CACHE = 4  # mean-ablation reference sets kept


class Model:
    """A language model wrapped for interpretability. Build it with `nbinterp.load`."""

    def __init__(self, nn_model: Any, tokenizer: Any, name: str, remote: bool | str = False) -> None:
        self.nn = nn_model  # the nnsight wrapper
        self.hf = nn_model._module  # the Hugging Face module (meta weights when remote=True)
        self.tokenizer = tokenizer
        self.name = name
        self.remote = remote
        self.arch: Architecture = architecture_for(self.hf)
        self.shape: ModelShape = read_shape(self.hf.config)
        self._reference_means: dict[tuple, dict[int, torch.Tensor]] = {}
        self.forwards = 0  # forward passes run so far (each user action should cost a small constant)
        if remote:
            # NDIF does not have nbinterp installed: ship the helpers the trace
            # body calls (attention math, the Plan) by value with each request.
            import nnsight

            nnsight.register("nbinterp")
        # nnsight cannot trace one model from two threads at once (a view's
        # background sweep and a cell's model.run): every forward holds this.
        self.lock = threading.RLock()

    # ---------------------------------------------------------------- figures
    n_layers = property(lambda self: self.shape.n_layers)
    n_heads = property(lambda self: self.shape.n_heads)
    n_kv_heads = property(lambda self: self.shape.n_kv_heads)
    head_dim = property(lambda self: self.shape.head_dim)
    d_model = property(lambda self: self.shape.d_model)
    max_positions = property(lambda self: self.shape.max_positions)

    @property
    def d_mlp(self) -> int:
        down = get_path(get_path(self.hf, self.arch.layers)[0], f"{self.arch.mlp}.{self.arch.mlp_down}")
        return down.weight.shape[0] if self.arch.conv1d_out_proj else down.weight.shape[1]

    def __repr__(self) -> str:
        where = {False: "local", True: "remote (NDIF)", "local": "remote-simulated"}[self.remote]
        if self.remote is not True:
            parameter = next(self.hf.parameters())
            where += f", {str(parameter.dtype).removeprefix('torch.')} on {parameter.device}"
        return (
            f"<nbinterp.Model {self.name}: {self.n_layers} layers x {self.n_heads} heads "
            f"({self.n_kv_heads} kv), d_model {self.d_model}, {where}>"
        )

    # ------------------------------------------------------------- validation
    @staticmethod
    def _error(message: str) -> NbinterpError:
        return NbinterpError(message)

    def check_layer(self, layer: Any) -> int:
        """`layer` as an int, or a clear error naming the model's range."""
        return plans.check_layer(self.shape, layer)

    def check_head(self, head: Any) -> int:
        """`head` as an int, or a clear error naming the model's range."""
        return plans.check_head(self.shape, head)

    def parse_component(self, key: Any) -> tuple[int, int | str]:
        """(layer, head) | (layer, "mlp") | "L3.H1" | "L2.mlp" -> (layer, head or "mlp")."""
        return plans.parse_component(self.shape, key)

    def tokenize(self, prompt: Any) -> torch.Tensor:
        """Prompt text (or token ids) -> input ids [1, T], checked against the context length."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise self._error("the prompt is empty: pass some text, e.g. model.run('The capital of France is')")
            ids = self.tokenizer(prompt, return_tensors="pt").input_ids
            self._refuse_unknown(prompt, ids[0].tolist(), "the prompt")
        elif isinstance(prompt, torch.Tensor) or (isinstance(prompt, Sequence) and not isinstance(prompt, bytes)):
            ids = torch.as_tensor(prompt, dtype=torch.long).reshape(1, -1)
            if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < self.shape.vocab_size):
                raise self._error(f"token ids must lie in 0..{self.shape.vocab_size - 1}")
        else:
            raise self._error(f"a prompt is a string or a list of token ids, not {type(prompt).__name__}")
        if ids.shape[1] == 0:
            raise self._error("the prompt is empty: it has no tokens")
        if self.max_positions is not None and ids.shape[1] > self.max_positions:
            raise self._error(
                f"the prompt has {ids.shape[1]} tokens but {self.name} reads at most {self.max_positions}: "
                "shorten the prompt"
            )
        return ids

    def _refuse_unknown(self, text: str, ids: list[int], what: str) -> None:
        """An error naming the words the tokenizer maps to its unknown token:
        every number computed about `<unk>` would be about no word at all."""
        unk_id = getattr(self.tokenizer, "unk_token_id", None)
        if unk_id is None or unk_id not in ids:
            return
        unk = self.tokenizer.unk_token
        words: list[str] = []
        try:
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            for token_id, (start, end) in zip(encoded.input_ids, encoded.offset_mapping):
                if token_id == unk_id and text[start:end] != unk:
                    words.append(text[start:end])
        except (NotImplementedError, TypeError, ValueError):  # slow tokenizers have no offsets
            if text.strip() != unk:
                words.append("?")
        if not words:
            return  # the text spelled the unknown token itself
        shown = ", ".join(repr(w) for w in dict.fromkeys(words)) if "?" not in words else "some words"
        raise self._error(
            f"{what} contains {shown}, which {self.name}'s tokenizer does not know: it would become "
            f"{unk!r} and every number would be about {unk!r}. Use words the model knows"
            + (" (the bundled model's vocabulary is nbinterp.bundled.tasks.vocabulary())" if self.name == BUNDLED_MODEL_NAME else "")
        )

    def token_id(self, token: str | int) -> int:
        """A single token's id; a string must tokenize to exactly one token."""
        if isinstance(token, numbers.Integral) and not isinstance(token, bool):
            if not 0 <= token < self.shape.vocab_size:
                raise self._error(f"token id {token} is out of range 0..{self.shape.vocab_size - 1}")
            return int(token)
        if not isinstance(token, str) or not token:
            raise self._error(f"a target or foil is a non-empty string or a token id, not {token!r}")
        ids = self.tokenizer(token, add_special_tokens=False).input_ids
        self._refuse_unknown(token, ids, f"the target/foil {token!r}")
        if len(ids) != 1:
            pieces = self.tokenizer.convert_ids_to_tokens(ids)
            raise self._error(
                f"{token!r} is {len(ids)} tokens {pieces}, not one: pass a single-token string "
                "(GPT-2-style tokenizers usually need a leading space, ' Paris') or a token id"
            )
        return ids[0]

    # -------------------------------------------------------------------- run
    def run(
        self,
        prompt: Any,
        *,
        ablate: dict | None = None,
        ablation: str = "zero",
        reference: Sequence[str] | None = None,
        ablate_neurons: dict | None = None,
        knockout: Iterable[tuple[int, int, int, int]] | None = None,
        patch_from: Any = None,
        patch: Iterable[tuple] | None = None,
        add: dict | None = None,
        project_out: dict | None = None,
        target: str | int | None = None,
        foil: str | int | None = None,
        position: int = -1,
        gradients: bool = False,
        capture: Iterable[str] | None = None,
    ) -> Run:
        """One forward pass with interventions; returns a new `Run`.

        ablate:          {(layer, head): scale, "L3.H1": scale, "L2.mlp": scale}; 0 removes it.
        ablation:        "zero" (scale towards 0) or "mean" (towards the mean over `reference` prompts).
        ablate_neurons:  {(layer, neuron): scale} on the MLP's hidden activations.
        knockout:        [(layer, head, query, key), ...] attention edges set to zero (rows renormalised).
        patch_from:      a prompt or Run of the same token length; `patch` lists the sites to copy from it:
                         ("resid_pre" | "attn_out" | "mlp_out", layer, position or None) or
                         ("head", layer, head, position or None).
        add:             {(site, layer): delta [T, width]} added to that activation (site one of
                         "resid_pre", "attn_out", "mlp_out", "neurons", "resid_final"): steering.
        project_out:     {(site, layer): direction [width] or (direction, scale)}: the component
                         along the (unit-normalised) direction scaled by `scale` (default 0: removed).
        target, foil:    with gradients=True, gradients of logit(target) - logit(foil) at `position`
                         w.r.t. every attention probability and head output (one forward + one backward).
        capture:         what to read in this forward, for every layer: names of
                         `nbinterp.engine.trace.CAPTURES` ("qkv", "z", "w_o", "resid_pre", "attn_out",
                         "mlp_out", "lens") and "logits" for every position's logits. Default: the
                         last position's logits only (locally and remotely alike); whatever else
                         the run is asked for later is fetched for every layer in one more forward.
        """
        input_ids = self.tokenize(prompt)
        n_tokens = input_ids.shape[1]
        plan = Plan()
        self._plan_ablations(plan, ablate or {}, ablation, reference)
        self._plan_neurons(plan, ablate_neurons or {})
        self._plan_knockout(plan, knockout or [], n_tokens)
        self._plan_edits(plan, add or {}, project_out or {}, n_tokens)
        if patch is not None or patch_from is not None:
            if patch is None or patch_from is None:
                raise self._error("activation patching needs both patch_from= (a prompt or Run) and patch=[sites]")
            build_patch(self, plan, input_ids, patch_from, patch)
        metric = None
        if gradients:
            if target is None:
                raise self._error("gradients=True needs a target token (and optionally a foil), e.g. target=' Paris'")
            metric = Metric.of(self, target, foil, position, n_tokens)
        elif target is not None or foil is not None:
            # validate now so a typo fails before the forward pass
            for token in (target, foil):
                if token is not None:
                    self.token_id(token)
        names = self.capture_names(capture)
        captured = self.execute(
            input_ids, plan, self.all_layers(n for n in names if n != "logits"), metric,
            logits="all" if "logits" in names else "last",
        )
        description = {
            k: v for k, v in dict(
                ablate=ablate, ablation=ablation if ablate else None, reference=reference,
                ablate_neurons=ablate_neurons, knockout=knockout, patch=patch,
                add=None if not add else {k: "<delta>" for k in add},
                project_out=None if not project_out else {k: "<direction>" for k in project_out},
                target=target, foil=foil, gradients=gradients or None,
            ).items() if v
        }
        return Run(self, input_ids, plan, captured, metric, description)

    def capture_names(self, capture: Iterable[str] | None) -> tuple[str, ...]:
        """A user's capture= argument, checked."""
        if capture is None:
            return ()
        if isinstance(capture, str):
            capture = (capture,)
        names = tuple(capture)
        unknown = set(names) - set(CAPTURES) - {"logits"}
        if unknown:
            raise self._error(f"unknown capture {sorted(unknown)}: choose from {CAPTURES + ('logits',)}")
        return names

    def all_layers(self, names: Iterable[str]) -> dict[str, set[int]]:
        """{name: every layer it has}: the logit lens also reads the final stream (as
        layer n_layers); the embeddings and the rotary table are one entry (layer 0)."""
        final = {"lens": set(range(self.n_layers + 1)), "resid_final": {self.n_layers}, "embed": {0}, "rotary": {0}}
        return {n: final.get(n, set(range(self.n_layers))) for n in names}

    def execute(
        self, input_ids: torch.Tensor, plan: Plan, capture: dict[str, set[int]],
        metric: Metric | None = None, gradients: bool | None = None, **options: Any,
    ) -> dict:
        """The engine's one trace (`nbinterp.engine.trace.execute`), under the model's lock, results on CPU,
        captures typed (`nbinterp.engine.captures`). `options` are `TraceRequest` fields
        (logits, lens_tokens, attention_mask, all_rows, direct_effect), or `resume=`
        (`nbinterp.engine.resume.Resume`: run only the blocks and tokens an intervention can change).

        The one execution path: every analysis builds a `Plan`, the captures it
        needs per layer and its metric, and calls this once per forward."""
        device = self._device()
        resume = options.pop("resume", None)
        if resume is not None:
            if capture or metric is None or gradients:
                raise self._error("a resumed forward reads only a metric (no captures, no gradients)")
            # a remote request would have to ship the KV cache: there only the blocks below are skipped
            fields = trim(input_ids.to(device), plan, metric, resume, self.hf.config, tokens=self.remote is False)
            input_ids, plan, metric = fields.pop("input_ids"), fields.pop("plan"), fields.pop("metric")
            options.update(fields)
        request = TraceRequest(input_ids.to(device), plan, capture, metric, gradients, **options)
        with self.lock:
            saved = execute(self.nn, self.arch, self.shape, request, self.remote)
        self.forwards += 1
        return typed(_to_cpu(dict(saved)))

    def _device(self) -> torch.device:
        """Where inputs go: the executing model's device (the client's `hf` holds
        meta weights for a remote model; remote inputs are sent from the CPU)."""
        if self.remote is True:
            return torch.device("cpu")
        device = next(self.nn._module.parameters()).device
        return torch.device("cpu") if device.type == "meta" else device

    # --------------------------------------------------------- plan builders
    def _plan_ablations(self, plan: Plan, ablate: dict, ablation: str, reference: Sequence[str] | None) -> None:
        if not isinstance(ablate, dict):
            raise self._error("ablate= takes a dict like {(layer, head): scale} or {'L3.H1': 0.0, 'L2.mlp': 0.5}")
        if ablation not in ("zero", "mean"):
            raise self._error(f"ablation must be 'zero' or 'mean', not {ablation!r}")
        heads: dict[int, dict[int, float]] = {}
        for key, value in ablate.items():
            layer, head = self.parse_component(key)
            scale = plans.check_scale(value, f"{key!r}")
            if head == "mlp":
                plan.mlp_scale[layer] = scale
            else:
                heads.setdefault(layer, {})[head] = scale
        if not heads:
            return
        means = self._mean_z(reference) if ablation == "mean" else None
        width = self.n_heads * self.head_dim
        for layer, scales in heads.items():
            z_scale = torch.ones(width)
            for head, scale in scales.items():
                z_scale[head * self.head_dim : (head + 1) * self.head_dim] = scale
            plan.z_scale[layer] = z_scale
            plan.z_baseline[layer] = means[layer] if means is not None else torch.zeros(width)

    def capture_batch(
        self, rows: Sequence[torch.Tensor], capture: dict[str, set[int]], plan: Plan | None = None,
    ) -> tuple[dict, torch.Tensor]:
        """Captures of several prompts of different lengths in ONE forward.

        `rows` are 1-D token-id tensors; they are right-padded to one length
        with an attention mask (causal attention never lets a real token see
        the padding after it). Returns ({name: {layer: [B, T, width]}}, mask
        [B, T] with 1 = token, 0 = padding)."""
        if not rows:
            raise self._error("capture_batch needs at least one prompt")
        length = max(len(ids) for ids in rows)
        batch = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for row, ids in enumerate(rows):
            batch[row, : len(ids)] = torch.as_tensor(ids)
            mask[row, : len(ids)] = 1
        saved = self.execute(batch, plan or Plan(), capture, logits="none", all_rows=True,
                             attention_mask=None if bool(mask.all()) else mask)
        return {name: saved[name] for name in capture}, mask

    def _mean_z(self, reference: Sequence[str] | None) -> dict[int, torch.Tensor]:
        """Mean of each head's output-projection input over every token of the reference prompts.

        One forward for all of them: right-padded to one length with an
        attention mask (causal attention never lets a real token see the
        padding after it), the padding left out of the mean. Cached per
        reference list (the last few)."""
        if not reference or isinstance(reference, str):
            raise self._error("mean ablation needs reference=[prompt, ...] to average each head's output over")
        key = tuple(reference)
        if key not in self._reference_means:
            z, mask = self.capture_batch([self.tokenize(prompt)[0] for prompt in reference], self.all_layers(["z"]))
            z = z["z"]
            weights = mask.float()[..., None]
            means = {layer: (z[layer].float() * weights).sum((0, 1)) / weights.sum() for layer in z}
            if len(self._reference_means) >= REFERENCE_CACHE:
                self._reference_means.pop(next(iter(self._reference_means)))
            self._reference_means[key] = means
        return self._reference_means[key]

    def _plan_neurons(self, plan: Plan, ablate_neurons: dict) -> None:
        if not isinstance(ablate_neurons, dict):
            raise self._error("ablate_neurons= takes a dict like {(layer, neuron): scale}")
        d_mlp = self.d_mlp if ablate_neurons else 0
        for key, value in ablate_neurons.items():
            layer, neuron = plans.parse_neuron(self.shape, key, d_mlp)
            scale = plans.check_scale(value, f"neuron {key!r}")
            plan.neuron_scale.setdefault(layer, torch.ones(d_mlp))[neuron] = scale

    def site_width(self, site: str) -> int:
        return self.d_mlp if site == "neurons" else self.d_model

    def _plan_edits(self, plan: Plan, add: dict, project_out: dict, n_tokens: int) -> None:
        if not isinstance(add, dict) or not isinstance(project_out, dict):
            raise self._error("add= and project_out= take dicts keyed by (site, layer), e.g. {('resid_pre', 2): delta}")
        for key, delta in add.items():
            site, layer = plans.check_edit_site(self.shape, key)
            delta = torch.as_tensor(delta, dtype=torch.float32)
            width = self.site_width(site)
            if delta.shape not in ((n_tokens, width), (width,)):
                raise self._error(
                    f"add[{key!r}] has shape {tuple(delta.shape)}: use [{n_tokens}, {width}] (one row per token) "
                    f"or [{width}] (every token)"
                )
            plan.add[(site, layer)] = delta
        for key, value in project_out.items():
            site, layer = plans.check_edit_site(self.shape, key)
            direction, scale = value if isinstance(value, tuple) else (value, 0.0)
            direction = torch.as_tensor(direction, dtype=torch.float32).flatten()
            width = self.site_width(site)
            if direction.numel() != width or not torch.isfinite(direction).all() or direction.norm() == 0:
                raise self._error(f"project_out[{key!r}] needs a finite non-zero direction of {width} numbers")
            plan.project[(site, layer)] = (direction / direction.norm(), plans.check_scale(scale, f"project_out[{key!r}]"))

    def _plan_knockout(self, plan: Plan, knockout: Iterable, n_tokens: int) -> None:
        for edge in knockout:
            layer, head, query, key = plans.check_edge(self.shape, edge, n_tokens)
            mask = plan.knockout.setdefault(layer, torch.zeros(1, self.n_heads, n_tokens, n_tokens, dtype=torch.bool))
            mask[0, head, query, key] = True
        for layer, mask in plan.knockout.items():
            full_rows = mask[0].sum(-1) >= torch.arange(1, n_tokens + 1)
            if full_rows.any():
                head, query = full_rows.nonzero()[0].tolist()
                raise self._error(
                    f"knockout removes every key of query {query} in L{layer}.H{head}: keep at least one "
                    "(attention must go somewhere)"
                )



def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value
