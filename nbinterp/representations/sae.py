"""Sparse autoencoders: a plain-torch `SparseAutoencoder`, a loader for
SAELens-format directories, and the engine site an SAE reads.

    sae = ni.load_sae("path/to/sae")          # cfg.json + sae_weights.safetensors
    f = sae.encode(x)                         # [..., d_in] -> [..., d_sae]
    site, layer = sae_site(sae, model)        # ("resid_pre", 3) for blocks.3.hook_resid_pre

The format is the one sae-lens 6.x writes (`SAE.save_model`): `cfg.json` with
d_in, d_sae, dtype, apply_b_dec_to_input, normalize_activations,
reshape_activations, architecture (+ k, rescale_acts_by_decoder_norm for topk)
and a metadata dict holding hook_name; weights W_enc [d_in, d_sae], b_enc,
W_dec [d_sae, d_in], b_dec (+ threshold for jumprelu, b_gate/r_mag/b_mag for
gated). sae-lens is not needed at run time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from nbinterp.errors import NbinterpError

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
ARCHITECTURES = ("standard", "jumprelu", "topk", "gated")
BUNDLED_SAE_DIR = Path(__file__).resolve().parent.parent / "bundled" / "sae"

# weight name -> shape in terms of the config (d_in, d_sae)
_WEIGHT_SHAPES = {
    "W_enc": ("d_in", "d_sae"), "b_enc": ("d_sae",), "W_dec": ("d_sae", "d_in"), "b_dec": ("d_in",),
    "threshold": ("d_sae",), "b_gate": ("d_sae",), "r_mag": ("d_sae",), "b_mag": ("d_sae",),
}
_ARCH_WEIGHTS = {
    "standard": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
    "gated": ("W_enc", "W_dec", "b_dec", "b_gate", "r_mag", "b_mag"),
}

# TransformerLens hook names the engine has a site for
HOOK_PATTERNS = {
    r"blocks\.(\d+)\.hook_resid_pre": "resid_pre",
    r"blocks\.(\d+)\.hook_resid_post": "resid_post",
    r"blocks\.(\d+)\.hook_attn_out": "attn_out",
    r"blocks\.(\d+)\.hook_mlp_out": "mlp_out",
    r"blocks\.(\d+)\.mlp\.hook_post": "neurons",
}
SUPPORTED_HOOKS = ("blocks.{l}.hook_resid_pre, blocks.{l}.hook_resid_post, blocks.{l}.hook_attn_out, "
                   "blocks.{l}.hook_mlp_out, blocks.{l}.mlp.hook_post")


class SparseAutoencoder(torch.nn.Module):
    """An SAE over one activation site: `encode(x) -> f`, `decode(f) -> x_hat`.

    architecture "standard": f = relu((x - b_dec) W_enc + b_enc) (b_dec is
    subtracted only if apply_b_dec_to_input); "jumprelu": the same, zeroed
    where the pre-activation is not above the feature's threshold; "topk":
    the k largest pre-activations (relu'd), the rest zero; "gated": a gate
    path (x W_enc + b_gate > 0) times a magnitude path relu(x W_enc e^r_mag + b_mag).
    decode(f) = f W_dec + b_dec.
    """

    def __init__(
        self, W_enc: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor, b_enc: torch.Tensor | None = None, *,
        architecture: str = "standard", hook_name: str | None = None, k: int | None = None,
        threshold: torch.Tensor | None = None, b_gate: torch.Tensor | None = None, r_mag: torch.Tensor | None = None,
        b_mag: torch.Tensor | None = None, apply_b_dec_to_input: bool = True,
        rescale_acts_by_decoder_norm: bool = False, metadata: dict | None = None,
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise NbinterpError(f"unknown SAE architecture {architecture!r}; supported: {', '.join(ARCHITECTURES)}")
        given = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec, "threshold": threshold,
                 "b_gate": b_gate, "r_mag": r_mag, "b_mag": b_mag}
        d_in, d_sae = W_enc.shape if W_enc.dim() == 2 else (None, None)
        _check_weights({n: given[n] for n in _ARCH_WEIGHTS[architecture] if given[n] is not None},
                       architecture, d_in, d_sae, "the weights given")
        for name in _ARCH_WEIGHTS[architecture]:
            self.register_parameter(name, torch.nn.Parameter(given[name].detach().clone()))
        if architecture == "topk" and not (isinstance(k, int) and 0 < k <= d_sae):
            raise NbinterpError(f"a topk SAE needs k between 1 and d_sae={d_sae}, got {k!r}")
        self.architecture = architecture
        self.hook_name = hook_name
        self.k = k
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.rescale_acts_by_decoder_norm = bool(rescale_acts_by_decoder_norm)
        self.metadata = dict(metadata or {})

    # ----------------------------------------------------------------- shape
    d_in = property(lambda self: self.W_dec.shape[1])
    d_sae = property(lambda self: self.W_dec.shape[0])
    dtype = property(lambda self: self.W_dec.dtype)
    device = property(lambda self: self.W_dec.device)

    @property
    def site(self) -> tuple[str, int]:
        """(engine site, layer) of `hook_name`, without a model: the stream after
        block l reads as ("resid_pre", l + 1); `sae_site(sae, model)` turns that
        into ("resid_final", n_layers) after the last block and checks the width."""
        if self.hook_name is None:
            raise NbinterpError("this SAE has no hook_name (cfg.json metadata.hook_name): pass site= explicitly")
        site, layer = parse_hook_name(self.hook_name)
        return ("resid_pre", layer + 1) if site == "resid_post" else (site, layer)

    def __repr__(self) -> str:
        extra = f", k={self.k}" if self.architecture == "topk" else ""
        return (f"SparseAutoencoder({self.architecture}{extra}, d_in={self.d_in}, d_sae={self.d_sae}, "
                f"hook_name={self.hook_name!r}, {str(self.dtype).removeprefix('torch.')} on {self.device})")

    # --------------------------------------------------------------- compute
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """x W_enc + b_enc after the input bias (the magnitude path for gated)."""
        x = self._check_input(x)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        if self.architecture == "gated":
            return x @ (self.W_enc * self.r_mag.exp()) + self.b_mag
        return x @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations [..., d_sae] of activations x [..., d_in]."""
        pre = self.pre_activations(x)
        if self.architecture == "standard":
            return pre.relu()
        if self.architecture == "jumprelu":
            return pre.relu() * (pre > self.threshold).to(pre.dtype)
        if self.architecture == "gated":
            sae_in = self._check_input(x) - self.b_dec * self.apply_b_dec_to_input
            return (sae_in @ self.W_enc + self.b_gate > 0).to(pre.dtype) * pre.relu()
        if self.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, values.relu())

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction [..., d_in] of feature activations f [..., d_sae]."""
        f = torch.as_tensor(f).to(device=self.device, dtype=self.dtype)
        if f.shape[-1:] != (self.d_sae,):
            raise NbinterpError(f"decode takes [..., d_sae={self.d_sae}] feature activations, got {tuple(f.shape)}")
        if self.architecture == "topk" and self.rescale_acts_by_decoder_norm:
            f = f / self.W_dec.norm(dim=-1)
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def reconstruction_error(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token fraction of variance unexplained, shape x.shape[:-1]:
        ||x_t - x_hat_t||^2 over the mean squared distance of the tokens of x
        from their mean, so its mean over tokens is the batch's FVU (needs >= 2 tokens)."""
        x = self._check_input(x)
        flat = x.reshape(-1, self.d_in)
        if flat.shape[0] < 2:
            raise NbinterpError("reconstruction_error needs at least 2 tokens (the variance is across tokens)")
        variance = (flat - flat.mean(0)).pow(2).sum(-1).mean()
        return (x - self(x)).pow(2).sum(-1) / variance

    def explained_variance(self, x: torch.Tensor) -> float:
        """1 - FVU of the tokens of x [..., d_in]."""
        return 1.0 - self.reconstruction_error(x).mean().item()

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.shape[-1:] != (self.d_in,):
            raise NbinterpError(f"this SAE reads [..., d_in={self.d_in}] activations, got {tuple(x.shape)}")
        return x.to(device=self.device, dtype=self.dtype)


# -------------------------------------------------------------------- loading
def load_sae(path: str | Path, *, device: Any = None, dtype: Any = None) -> SparseAutoencoder:
    """Load an SAE saved in SAELens format (a directory with cfg.json and
    sae_weights.safetensors, as `sae_lens.SAE.save_model` writes it).

    dtype defaults to the config's; device to the CPU."""
    from safetensors.torch import load_file

    folder = Path(path)
    if not folder.is_dir():
        raise NbinterpError(f"no SAE directory at {str(folder)!r}: pass a folder holding {CFG_FILENAME} and {WEIGHTS_FILENAME}")
    missing = [n for n in (CFG_FILENAME, WEIGHTS_FILENAME) if not (folder / n).is_file()]
    if missing:
        raise NbinterpError(f"{str(folder)!r} is not an SAELens SAE directory: {' and '.join(missing)} missing "
                            f"(it needs {CFG_FILENAME} and {WEIGHTS_FILENAME}, as sae_lens.SAE.save_model writes them)")
    cfg = json.loads((folder / CFG_FILENAME).read_text())
    architecture = _architecture(cfg)
    _check_supported_options(cfg, folder)
    weights = load_file(str(folder / WEIGHTS_FILENAME))
    if "log_threshold" in weights:  # older jumprelu checkpoints
        weights["threshold"] = weights.pop("log_threshold").exp()
    if "scaling_factor" in weights:
        if not torch.allclose(weights["scaling_factor"], torch.ones_like(weights["scaling_factor"])):
            raise NbinterpError(f"{folder}: a finetuning scaling_factor other than 1 is not supported; fold it into W_dec")
        del weights["scaling_factor"]
    for key in ("d_in", "d_sae"):
        if not isinstance(cfg.get(key), int):
            raise NbinterpError(f"{folder / CFG_FILENAME} has no integer {key!r}")
    expected = set(_ARCH_WEIGHTS[architecture])
    if set(weights) != expected:
        raise NbinterpError(
            f"{folder / WEIGHTS_FILENAME} holds {sorted(weights)}, but a {architecture!r} SAE has exactly {sorted(expected)}"
        )
    _check_weights(weights, architecture, cfg["d_in"], cfg["d_sae"], str(folder / WEIGHTS_FILENAME))
    target = _dtype(dtype if dtype is not None else cfg.get("dtype", "float32"))
    weights = {n: w.to(dtype=target, device=device or "cpu") for n, w in weights.items()}
    metadata = dict(cfg.get("metadata") or {})
    hook_name = metadata.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    sae = SparseAutoencoder(
        **weights, architecture=architecture, hook_name=hook_name, k=k,
        apply_b_dec_to_input=cfg.get("apply_b_dec_to_input", True),
        rescale_acts_by_decoder_norm=cfg.get("rescale_acts_by_decoder_norm", False), metadata=metadata,
    )
    return sae.requires_grad_(False)


def bundled_sae() -> SparseAutoencoder:
    """The SAE shipped with the bundled model (`nbinterp/bundled/sae`, card.json
    beside it): a topk SAE on the residual stream entering block 3."""
    return load_sae(BUNDLED_SAE_DIR)


def _architecture(cfg: dict) -> str:
    architecture = cfg.get("architecture")
    if architecture is None:  # configs before sae-lens 6
        topk = cfg.get("activation_fn") == "topk" or cfg.get("activation_fn_str") == "topk"
        architecture = "topk" if topk else "standard"
    if architecture not in ARCHITECTURES:
        raise NbinterpError(f"cfg.json says architecture {architecture!r}; supported: {', '.join(ARCHITECTURES)} "
                            f"(load other kinds with sae_lens.SAE.load_from_disk: nbinterp accepts any object with encode/decode)")
    return architecture


def _check_supported_options(cfg: dict, folder: Path) -> None:
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None, False):
        raise NbinterpError(
            f"{folder}: normalize_activations={norm!r} is not supported: the input scaling is not part of the saved weights "
            "(fold it in with sae_lens's fold_activation_norm_scaling_factor and save again, or use sae_lens's SAE object)"
        )
    reshape = cfg.get("reshape_activations", "none")
    hook = (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name") or ""
    if reshape not in ("none", None) or hook.endswith("hook_z"):
        raise NbinterpError(f"{folder}: SAEs on attention head outputs (hook_z) are not supported; supported hooks: {SUPPORTED_HOOKS}")


def _check_weights(weights: dict, architecture: str, d_in: Any, d_sae: Any, where: str) -> None:
    missing = [n for n in _ARCH_WEIGHTS[architecture] if n not in weights]
    if missing:
        raise NbinterpError(f"{where}: a {architecture!r} SAE needs {', '.join(missing)}")
    sizes = {"d_in": d_in, "d_sae": d_sae}
    for name, weight in weights.items():
        want = tuple(sizes[d] for d in _WEIGHT_SHAPES[name])
        if tuple(weight.shape) != want:
            names = "[" + ", ".join(_WEIGHT_SHAPES[name]) + "]"
            raise NbinterpError(f"{where}: {name} has shape {tuple(weight.shape)}, but d_in={d_in}, d_sae={d_sae} "
                                f"make it {names} = {list(want)}")


def _dtype(value: Any) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    name = str(value).removeprefix("torch.")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise NbinterpError(f"unknown SAE dtype {value!r}: use float32, float16 or bfloat16")
    return dtype


# ---------------------------------------------------------------- engine site
def parse_hook_name(hook_name: str) -> tuple[str, int]:
    """("resid_pre" | "resid_post" | "attn_out" | "mlp_out" | "neurons", layer) of a TransformerLens hook name."""
    for pattern, site in HOOK_PATTERNS.items():
        match = re.fullmatch(pattern, str(hook_name))
        if match:
            return site, int(match.group(1))
    raise NbinterpError(f"SAE hook {hook_name!r} has no engine site; supported hooks: {SUPPORTED_HOOKS}")


def hook_name_of(sae: Any) -> str:
    """The TransformerLens hook name an SAE reads: nbinterp's `hook_name`, or a
    sae_lens SAE's `cfg.metadata.hook_name` (`cfg.hook_name` before sae-lens 6)."""
    name = getattr(sae, "hook_name", None)
    cfg = getattr(sae, "cfg", None)
    if name is None and cfg is not None:
        metadata = getattr(cfg, "metadata", None)
        name = getattr(metadata, "hook_name", None) if metadata is not None else None
        name = name or getattr(cfg, "hook_name", None)
    if not name:
        raise NbinterpError(f"{type(sae).__name__} names no hook (hook_name or cfg.metadata.hook_name): "
                            "pass the site explicitly as (site, layer)")
    return str(name)


def sae_site(sae: Any, model: Any) -> tuple[str, int]:
    """(engine site, layer) that `sae` reads on `model`, checked against the
    model's layers and the site's width. `sae` is an nbinterp SAE or any object
    with encode/decode naming its hook (a sae_lens SAE)."""
    hook = hook_name_of(sae)
    site, layer = parse_hook_name(hook)
    n_layers = model.n_layers
    if not 0 <= layer < n_layers:
        raise NbinterpError(f"SAE hook {hook!r} is at layer {layer}, but {model.name} has layers 0-{n_layers - 1}")
    if site == "resid_post":
        site, layer = ("resid_final", n_layers) if layer == n_layers - 1 else ("resid_pre", layer + 1)
    width = model.site_width(site)
    d_in = _d_in(sae)
    if d_in is not None and d_in != width:
        raise NbinterpError(f"SAE hook {hook!r} maps to ({site!r}, {layer}), {width} wide on {model.name}, "
                            f"but the SAE reads d_in={d_in}: it was trained on another model")
    return site, layer


def _d_in(sae: Any) -> int | None:
    d_in = getattr(sae, "d_in", None)
    if d_in is None:
        d_in = getattr(getattr(sae, "cfg", None), "d_in", None)
    if d_in is None and getattr(sae, "W_dec", None) is not None:
        d_in = sae.W_dec.shape[-1]
    return None if d_in is None else int(d_in)


@torch.no_grad()
def decoder_directions(sae: Any) -> torch.Tensor:
    """[d_sae, d_in]: what a unit activation of each feature adds to the
    reconstruction. W_dec when decode is linear in it, else
    decode(one-hot) - decode(0) (e.g. a topk SAE that divides by decoder norms)."""
    rescaled = getattr(sae, "rescale_acts_by_decoder_norm", None)
    if rescaled is None:
        rescaled = getattr(getattr(sae, "cfg", None), "rescale_acts_by_decoder_norm", False)
    W_dec = getattr(sae, "W_dec", None)
    if isinstance(W_dec, torch.Tensor) and W_dec.dim() == 2 and not rescaled:
        return W_dec.detach()
    d_sae = getattr(sae, "d_sae", None) or getattr(getattr(sae, "cfg", None), "d_sae", None)
    if d_sae is None:
        raise NbinterpError(f"{type(sae).__name__} has no W_dec and no d_sae: cannot read its decoder directions")
    reference = next(iter(sae.parameters())) if hasattr(sae, "parameters") else torch.empty(0)
    eye = torch.eye(int(d_sae), dtype=reference.dtype, device=reference.device)
    return (sae.decode(eye) - sae.decode(torch.zeros_like(eye[:1]))).detach()
