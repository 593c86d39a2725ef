"""Feature activations of one prompt: MLP neurons of a layer, or the latents
of a sparse autoencoder (SAE) at its site, with steering, the SAE's
reconstruction error, direct logit effects and top-activating contexts.

    acts = FeatureActivations(model, prompt, layer=2)        # neurons of layer 2
    acts = FeatureActivations(model, prompt, sae=sae)        # any object with encode / decode
    acts.top(token=5, k=10); acts.feature(123); acts.steer({123: 4.0})

Steering adds decode(f') - decode(f) at the site, f the clean encoding: the
SAE's error term x - decode(f) stays in, so steering nothing is the plain run.
For neurons the edit is on the neurons themselves (decode is the identity).
Activations are kept as the top k per token; the dense matrix only when small.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch

from nbinterp.engine import plan as plans
from nbinterp.engine.batch import RowPlan, measure
from nbinterp.engine.plan import Metric, Plan
from nbinterp.engine.run import Run
from nbinterp.engine.tokens import display_text
from nbinterp.errors import NbinterpError
from nbinterp.representations import directions
from nbinterp.representations.contexts import Context, ContextIndex, context_index

if TYPE_CHECKING:
    from nbinterp.engine.model import Model

TOP_K = 32  # features kept per token
DENSE_LIMIT = 1 << 22  # keep the dense [T, n_features] matrix up to this many numbers (16 MB)
PER_TOKEN_LIMIT = 128  # per-token reconstruction effects up to this many tokens (one row per token)
STEER_MODES = ("scale", "clamp")
DIRECT_EFFECT_LABEL = ("direct effect on the last token's logits per unit of activation: the decoder direction "
                       "through the final norm linearised at this prompt's last token, then the unembedding "
                       "(estimated: ignores every layer in between)")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class FeatureSource:
    """What the features are: the MLP neurons of a layer (site ("neurons",
    layer), decode = identity) or an SAE's latents at its site."""

    def __init__(self, model: "Model", site: str, layer: int, sae: Any = None) -> None:
        self.model, self.site, self.layer, self.sae = model, site, layer, sae
        self.width = model.site_width(site)
        self.kind = "neurons" if sae is None else "sae"
        if sae is None:
            self.n_features = self.width
            return
        weight = _decoder_weight(sae)
        if weight is not None and weight.shape[-1] != self.width:
            raise NbinterpError(
                f"the SAE reads {weight.shape[-1]}-wide activations but {site} of layer {layer} is {self.width} wide "
                f"in {model.name}: use the SAE trained on this model and site")
        try:
            probe = self.encode(torch.zeros(1, self.width))
        except NbinterpError:
            raise
        except Exception as exc:  # noqa: BLE001 - any object with encode/decode: say what failed
            raise NbinterpError(f"the SAE could not encode a {self.width}-wide activation of {site} (layer {layer}): "
                                f"{type(exc).__name__}: {exc}") from None
        self.n_features = int(probe.shape[-1])

    @property
    def key(self) -> tuple:
        return (self.kind, self.site, self.layer, id(self.sae))

    @property
    def label(self) -> str:
        where = f"{self.site} of layer {self.layer}" if self.site != "resid_final" else "the final residual stream"
        if self.kind == "neurons":
            return f"MLP neurons of layer {self.layer} ({self.n_features})"
        return f"SAE features ({self.n_features}) at {where}"

    def check_feature(self, feature: Any) -> int:
        if not _is_int(feature) or not 0 <= feature < self.n_features:
            what = "neuron" if self.kind == "neurons" else "feature"
            raise NbinterpError(f"{what} {feature!r} is out of range: there are {self.n_features} ({what}s 0.."
                                f"{self.n_features - 1})")
        return int(feature)

    def _sae_tensor(self, x: torch.Tensor) -> torch.Tensor:
        parameters = getattr(self.sae, "parameters", None)
        first = next(iter(parameters()), None) if callable(parameters) else None
        return x if first is None else x.to(first.device, first.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[N, width] activations -> [N, n_features] float32 (on the CPU)."""
        if self.sae is None:
            return x.float()
        with torch.no_grad():
            return self.sae.encode(self._sae_tensor(x)).detach().float().cpu()

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """[N, n_features] -> [N, width] float32 (neurons: the activations themselves)."""
        if self.sae is None:
            return f.float()
        with torch.no_grad():
            return self.sae.decode(self._sae_tensor(f)).detach().float().cpu()

    def write(self, feature: int) -> torch.Tensor:
        """[width]: what one unit of the feature adds at its site (a neuron's
        one-hot; an SAE's decoder row)."""
        feature = self.check_feature(feature)
        if self.kind == "neurons":
            return torch.nn.functional.one_hot(torch.tensor(feature), self.n_features).float()
        row = _decoder_weight(self.sae)
        return row[feature].float() if row is not None else (
            self.decode(torch.nn.functional.one_hot(torch.tensor([feature]), self.n_features).float())
            - self.decode(torch.zeros(1, self.n_features)))[0]

    def direction(self, feature: int) -> torch.Tensor:
        """[d_model]: what one unit of the feature writes into the residual
        stream (a neuron's down-projection row; an SAE's decoder row, through
        the down projection for an SAE on the neurons: read by the engine's trace)."""
        write = self.write(feature)
        return directions.mlp_write(self.model, self.layer, write) if self.site == "neurons" else write


def _decoder_weight(sae: Any) -> torch.Tensor | None:
    """[d_sae, d_in] decoder rows, if the object exposes them."""
    try:
        from nbinterp.representations.sae import decoder_directions

        return decoder_directions(sae).detach().float().cpu()
    except ImportError:
        pass
    except NbinterpError:
        return None
    weight = getattr(sae, "W_dec", None)
    return weight.detach().float().cpu() if isinstance(weight, torch.Tensor) and weight.ndim == 2 else None


def feature_source(model: "Model", *, layer: Any = None, sae: Any = None, site: Any = None) -> FeatureSource:
    """Neurons of `layer`, or `sae`'s latents at its site (or at `site` = (site, layer))."""
    if sae is None:
        if site is not None:
            raise NbinterpError("site= goes with sae=; for MLP neurons pass layer=")
        if layer is None:
            raise NbinterpError("pass layer= (MLP neurons of that layer) or sae= (an SAE's features)")
        return FeatureSource(model, "neurons", model.check_layer(layer))
    if not (callable(getattr(sae, "encode", None)) and callable(getattr(sae, "decode", None))):
        raise NbinterpError(f"sae= needs an object with encode(x) and decode(f), not {type(sae).__name__}")
    if site is None:
        try:
            from nbinterp.representations.sae import sae_site
        except ImportError:
            sae_site = None
        if sae_site is not None:
            site_name, site_layer = sae_site(sae, model)
        elif isinstance(getattr(sae, "site", None), tuple):
            site_name, site_layer = sae.site
        else:
            raise NbinterpError("cannot tell where this SAE reads: pass site=('resid_pre', 2) (site, layer)")
        site = (site_name, site_layer)
    site_name, site_layer = plans.check_edit_site(model.shape, tuple(site) if isinstance(site, list) else site)
    if layer is not None and site_layer != layer:
        raise NbinterpError(f"the SAE reads layer {site_layer}, not layer={layer}: leave layer= out")
    return FeatureSource(model, site_name, site_layer, sae)


@dataclass
class ReconstructionError:
    """How well the SAE's reconstruction stands in for the real activation.

    fvu: per token, ||x - x_hat||^2 / ||x - mean||^2 (the mean over the
    prompt's tokens; 0 = perfect, 1 = no better than the mean), measured.
    metric_*: logit(target) - logit(foil) at the last position, measured with
    the reconstruction in place of the activation at every token at once,
    and (per_token) at one token at a time."""

    fvu: torch.Tensor  # [T]
    fvu_total: float
    metric_clean: float | None = None
    metric_reconstructed: float | None = None
    metric_change_per_token: torch.Tensor | None = None  # [T], None when not computed

    @property
    def metric_change(self) -> float | None:
        if self.metric_clean is None or self.metric_reconstructed is None:
            return None
        return self.metric_reconstructed - self.metric_clean


class FeatureActivations:
    """Features of one prompt; see the module docstring."""

    def __init__(self, model: "Model", prompt: Any, *, layer: Any = None, sae: Any = None, site: Any = None,
                 k: int = TOP_K, target: Any = None, foil: Any = None) -> None:
        self.source = source = feature_source(model, layer=layer, sae=sae, site=site)
        self.model = model
        self.input_ids = model.tokenize(prompt)
        if not _is_int(k) or k < 1:
            raise NbinterpError(f"k (features kept per token) must be a positive integer, not {k!r}")
        if foil is not None and target is None:
            raise NbinterpError("a foil needs a target: target='doctor', foil='nurse'")
        n_tokens = self.input_ids.shape[1]
        self.metric = None if target is None else Metric.of(model, target, foil, -1, n_tokens)
        self.target, self.foil = target, foil
        capture = {source.site: {source.layer}, "resid_final": {model.n_layers}}
        saved = model.execute(self.input_ids, Plan(), capture, logits="last")
        self.run = Run(model, self.input_ids, Plan(), saved, None, {})  # the clean run
        self.x = saved[source.site][source.layer].float()  # [T, width]
        self._final_last = saved["resid_final"][model.n_layers][-1].float()
        f = source.encode(self.x)
        self.k = min(int(k), source.n_features)
        self.top_values, self.top_indices = f.topk(self.k, dim=-1)  # [T, k]
        self._dense = f if f.numel() <= DENSE_LIMIT else None
        self._reconstruction = None if source.kind == "neurons" else source.decode(f)
        self._error: ReconstructionError | None = None

    # ------------------------------------------------------------ reading
    @property
    def tokens(self) -> list[str]:
        return display_text(self.model.tokenizer, self.input_ids[0].tolist())

    @property
    def n_features(self) -> int:
        return self.source.n_features

    def __len__(self) -> int:
        return self.input_ids.shape[1]

    def dense(self) -> torch.Tensor:
        """[T, n_features] float32: every activation (recomputed when not kept)."""
        return self._dense if self._dense is not None else self.source.encode(self.x)

    @property
    def activations(self) -> torch.Tensor:
        """[T, n_features] sparse (COO): the top k activations of each token
        (k = `self.k`); every value is in `dense()`."""
        rows = torch.arange(len(self)).repeat_interleave(self.k)
        indices = torch.stack([rows, self.top_indices.reshape(-1)])
        return torch.sparse_coo_tensor(indices, self.top_values.reshape(-1), (len(self), self.n_features),
                                       check_invariants=False).coalesce()

    def top(self, token: int, k: int = 10) -> list[tuple[int, float]]:
        """The token's k strongest features: [(feature, activation), ...], largest first."""
        token = plans.check_position(token, len(self), "token")
        if not _is_int(k) or k < 1:
            raise NbinterpError(f"k must be a positive integer, not {k!r}")
        if k <= self.k:
            return list(zip(self.top_indices[token, :k].tolist(), self.top_values[token, :k].tolist()))
        values, indices = self.dense()[token].topk(min(k, self.n_features))
        return list(zip(indices.tolist(), values.tolist()))

    def feature(self, feature: int) -> torch.Tensor:
        """[T]: the feature's activation on every token of the prompt."""
        feature = self.source.check_feature(feature)
        return self.dense()[:, feature].clone()

    # ------------------------------------------------------------ steering
    def steering_delta(self, features: dict, mode: str = "scale", positions: Iterable[int] | None = None) -> torch.Tensor:
        """[T, width]: decode(f') - decode(f), f' = f with each listed feature
        multiplied by its value ("scale") or set to it ("clamp") at `positions`
        (default: every token)."""
        if not isinstance(features, dict):
            raise NbinterpError("steer takes a dict {feature: value}, e.g. acts.steer({123: 4.0})")
        if mode not in STEER_MODES:
            raise NbinterpError(f"mode must be 'scale' (multiply the activation) or 'clamp' (set it), not {mode!r}")
        rows = torch.arange(len(self)) if positions is None else torch.tensor(
            sorted({plans.check_position(p, len(self), "steering position") for p in positions}), dtype=torch.long)
        checked = {}
        for feature, value in features.items():
            feature = self.source.check_feature(feature)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise NbinterpError(f"the steering value of feature {feature} must be a finite number, got {value!r}")
            checked[feature] = float(value)
        f = self.dense()
        steered = f.clone()
        for feature, value in checked.items():
            column = steered[rows, feature]
            steered[rows, feature] = column * value if mode == "scale" else torch.full_like(column, value)
        if self.source.kind == "neurons":
            return steered - f
        return self.source.decode(steered) - self.source.decode(f)

    def steer(self, features: dict, mode: str = "scale", positions: Iterable[int] | None = None, **run_options: Any) -> Run:
        """Re-run the prompt with features scaled or clamped (see
        `steering_delta`): a `Run`, as `model.run` returns; `run_options`
        go to `model.run` (e.g. capture=["logits"])."""
        delta = self.steering_delta(features, mode, positions)
        return self.model.run(self.input_ids, add={(self.source.site, self.source.layer): delta}, **run_options)

    # ------------------------------------------------------------ the error
    def reconstruction_error(self, per_token: bool | None = None) -> ReconstructionError:
        """The SAE's reconstruction error per token, and (with a target) the
        metric's change when the reconstruction replaces the activation;
        per_token (default: prompts up to PER_TOKEN_LIMIT tokens) also one
        token at a time, in batched forwards. Neurons are exact: all zeros."""
        n = len(self)
        if per_token is None:
            per_token = n <= PER_TOKEN_LIMIT
        if self._error is not None and (not per_token or self._error.metric_change_per_token is not None
                                        or self.metric is None):
            return self._error
        clean = None if self.metric is None else self._metric_value(self.run)
        if self._reconstruction is None:  # neurons: nothing is reconstructed
            zeros = torch.zeros(n)
            self._error = ReconstructionError(zeros, 0.0, clean, clean, zeros.clone() if self.metric is not None else None)
            return self._error
        error = (self.x - self._reconstruction).pow(2).sum(-1)
        centre = self.x.mean(0) if n > 1 else torch.zeros_like(self.x[0])
        variance = (self.x - centre).pow(2).sum(-1)
        fvu = error / variance.clamp_min(torch.finfo(torch.float32).tiny)
        total = float(error.sum() / variance.sum().clamp_min(torch.finfo(torch.float32).tiny))
        result = ReconstructionError(fvu, total, clean)
        if self.metric is not None:
            substitute = self._reconstruction - self.x
            key = (self.source.site, self.source.layer)
            result.metric_reconstructed = self._metric_value(self.model.run(self.input_ids, add={key: substitute}))
            if per_token:
                result.metric_change_per_token = self._per_token_metric(substitute)
        self._error = result
        return result

    def _metric_value(self, run: Run) -> float:
        return run.logit_diff(self.metric.target, self.metric.foil)

    def _per_token_metric(self, substitute: torch.Tensor) -> torch.Tensor:
        """metric(reconstruction at token t only) - metric(clean), every t: [T]
        (the engine's batched runner: each forward carries its clean row)."""
        key = (self.source.site, self.source.layer)

        def fill(plan: RowPlan, slot: int, t: int) -> None:
            delta = torch.zeros_like(substitute)
            delta[t] = substitute[t]
            plan.add(slot, *key, delta)

        return measure(self.model, self.input_ids, list(range(len(self))), fill, self.metric).effects[:, 0]

    # ------------------------------------------------------------ effects
    def direct_logit_effect(self, feature: int, k: int = 10) -> dict[str, list[tuple[str, float]]]:
        """{"positive": [(token, effect)], "negative": [...]}: the k tokens whose
        last-position logits one unit of the feature raises / lowers most
        directly (see DIRECT_EFFECT_LABEL: an estimate through the final norm
        linearised at this prompt, every layer after the feature ignored)."""
        source = self.source
        effect = directions.direct_logit_effect(self.model, source.write(feature), self._final_last,
                                                source.layer if source.site == "neurons" else None)
        k = max(1, min(int(k), effect.numel()))
        out = {}
        for name, values in (("positive", effect.topk(k)), ("negative", (-effect).topk(k))):
            ids = values.indices.tolist()
            out[name] = list(zip(display_text(self.model.tokenizer, ids), effect[ids].tolist()))
        return out

    # ------------------------------------------------------------ contexts
    def context_index(self, corpus: Sequence[Any] | None = None, batch_size: int | None = None) -> ContextIndex:
        """The (cached) pass over `corpus` that top contexts and densities come
        from; iterate it for progress, `cancel()` it. batch_size: tokens per forward."""
        return context_index(self.model, self.source, corpus, batch_size)

    def top_contexts(self, feature: int, corpus: Sequence[Any] | None = None, k: int = 10,
                     batch_size: int | None = None) -> list[Context]:
        """The k corpus documents where the feature fires most (each once, at
        its strongest token), over the whole corpus (finishes the pass)."""
        feature = self.source.check_feature(feature)
        return self.context_index(corpus, batch_size).run().contexts(feature, k)

    def density(self, feature: int, corpus: Sequence[Any] | None = None, batch_size: int | None = None) -> float:
        """Fraction of the corpus tokens (padding and <bos> excluded) where the feature is > 0."""
        feature = self.source.check_feature(feature)
        return self.context_index(corpus, batch_size).run().density(feature)

    def __repr__(self) -> str:
        return f"<FeatureActivations {self.source.label}: {len(self)} tokens, top {self.k} per token>"
