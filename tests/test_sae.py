"""SAEs: the loader against sae-lens's own loading of the same directory, the
hook-name -> engine-site mapping against activations read with plain torch
hooks, the errors, and the bundled SAE's card recomputed with plain torch on
HF hidden states (never retrained).

sae-lens is a test-only dependency (the `test` extra)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import nbinterp as ni
from conftest import PROMPT, random_model, word_tokenizer
from nbinterp.bundled import tasks
from nbinterp.errors import NbinterpError
from nbinterp.representations.sae import BUNDLED_SAE_DIR, SparseAutoencoder, bundled_sae, decoder_directions, load_sae, sae_site

sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is in the test extra: pip install -e '.[test]'")
warnings.filterwarnings("ignore", category=DeprecationWarning)

CARD = json.loads((BUNDLED_SAE_DIR / "card.json").read_text())
D_IN, D_SAE = 32, 96
# Same float32 arithmetic on both sides; the brief's bound, relative to the output scale.
F32_TOL = 1e-5


# ------------------------------------------------------------ sae-lens parity
def _sae_lens_sae(architecture: str, hook: str = "blocks.1.hook_resid_pre", **extra):
    """A random sae-lens SAE with non-trivial biases and thresholds."""
    from sae_lens.saes.sae import SAEMetadata

    classes = {"standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
               "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig),
               "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
               "gated": (sae_lens.GatedSAE, sae_lens.GatedSAEConfig)}
    sae_cls, cfg_cls = classes[architecture]
    torch.manual_seed(7)
    sae = sae_cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=SAEMetadata(hook_name=hook, model_name="test"), **extra))
    with torch.no_grad():
        for name, param in sae.named_parameters():
            if name == "threshold":
                param.copy_(torch.rand_like(param) * 0.5)
            else:
                param.add_(torch.randn_like(param) * 0.2)
    return sae


VARIANTS = {
    "standard": dict(),
    "standard_no_input_bias": dict(apply_b_dec_to_input=False),
    "jumprelu": dict(),
    "topk": dict(k=8),
    "topk_rescaled": dict(k=8, rescale_acts_by_decoder_norm=True),
    "gated": dict(),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_loader_matches_sae_lens(tmp_path, variant):
    architecture = variant.split("_")[0]
    sae_lens.StandardSAE  # noqa: B018  (the import registers the architectures)
    _sae_lens_sae(architecture, **VARIANTS[variant]).save_model(tmp_path)
    reference = sae_lens.SAE.load_from_disk(tmp_path)  # sae-lens's own reading of the directory
    ours = load_sae(tmp_path)
    assert isinstance(ours, SparseAutoencoder) and ours.architecture == architecture
    assert (ours.d_in, ours.d_sae, ours.hook_name) == (D_IN, D_SAE, "blocks.1.hook_resid_pre")
    torch.manual_seed(1)
    x = torch.randn(4, 9, D_IN) * 2
    with torch.no_grad():
        f_ref, f = reference.encode(x), ours.encode(x)
        active = (f_ref > 0).float().mean()
        assert 0.02 < active < 0.9, "the random SAE must have some features on and some off"
        torch.testing.assert_close(f, f_ref, rtol=F32_TOL, atol=F32_TOL * f_ref.abs().max().item())
        torch.testing.assert_close(ours.decode(f_ref), reference.decode(f_ref), rtol=F32_TOL,
                                   atol=F32_TOL * x.abs().max().item())
        torch.testing.assert_close(ours(x), reference(x), rtol=F32_TOL, atol=F32_TOL * x.abs().max().item())
    # decoder_directions: what a unit activation adds, read off sae-lens's decode
    eye = torch.eye(D_SAE)
    with torch.no_grad():
        unit = reference.decode(eye) - reference.decode(torch.zeros(1, D_SAE))
    for sae in (ours, reference):
        torch.testing.assert_close(decoder_directions(sae), unit, rtol=F32_TOL, atol=F32_TOL)


def test_dtype_and_device_arguments(tmp_path):
    _sae_lens_sae("standard").save_model(tmp_path)
    sae = load_sae(tmp_path, dtype="bfloat16", device="cpu")
    assert sae.dtype == torch.bfloat16 and sae.W_dec.device.type == "cpu"
    assert sae.encode(torch.randn(3, D_IN)).dtype == torch.bfloat16


# ------------------------------------------------------------ hook -> site
# TransformerLens hook -> what it reads, as plain torch hooks on HF modules
# (module path, "input" | "output"); written here independently of the
# engine's architecture table.
HF_HOOKS = {
    "gpt2": {"resid_pre": ("transformer.h.{l}", "input"), "resid_post": ("transformer.h.{l}", "output"),
             "attn_out": ("transformer.h.{l}.attn", "output"), "mlp_out": ("transformer.h.{l}.mlp", "output"),
             "mlp.hook_post": ("transformer.h.{l}.mlp.c_proj", "input")},
    "llama": {"resid_pre": ("model.layers.{l}", "input"), "resid_post": ("model.layers.{l}", "output"),
              "attn_out": ("model.layers.{l}.self_attn", "output"), "mlp_out": ("model.layers.{l}.mlp", "output"),
              "mlp.hook_post": ("model.layers.{l}.mlp.down_proj", "input")},
}


def _hook_references(hf, family, n_layers, input_ids):
    """{(kind, layer): activation [T, width]} read by plain forward hooks, one forward."""
    seen, handles = {}, []
    for layer in range(n_layers):
        for kind, (path, which) in HF_HOOKS[family].items():
            def record(mod, args, output, key=(kind, layer), which=which):
                value = args[0] if which == "input" else output
                seen[key] = (value[0] if isinstance(value, tuple) else value)[0].detach().clone()

            handles.append(hf.get_submodule(path.format(l=layer)).register_forward_hook(record))
    try:
        with torch.no_grad():
            hf(input_ids=input_ids)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _hook_name(kind, layer):
    return f"blocks.{layer}.{kind}" if kind == "mlp.hook_post" else f"blocks.{layer}.hook_{kind}"


@pytest.fixture(scope="module")
def bundled_model():
    return ni.load()


@pytest.fixture(scope="module")
def llama_model():
    return ni.load(random_model("llama"), tokenizer=word_tokenizer())


def _check_mapping(model, family, prompt):
    references = _hook_references(model.hf, family, model.n_layers, model.tokenize(prompt))
    run = model.run(prompt, capture=["resid_pre", "attn_out", "mlp_out", "neurons", "resid_final"])
    expected_sites = {"resid_pre": "resid_pre", "attn_out": "attn_out", "mlp_out": "mlp_out", "mlp.hook_post": "neurons"}
    for layer in range(model.n_layers):
        for kind in HF_HOOKS[family]:
            width = model.d_mlp if kind == "mlp.hook_post" else model.d_model
            site, site_layer = sae_site(_Stub(_hook_name(kind, layer), width), model)
            if kind == "resid_post":
                last = layer == model.n_layers - 1
                assert (site, site_layer) == (("resid_final", model.n_layers) if last else ("resid_pre", layer + 1))
            else:
                assert (site, site_layer) == (expected_sites[kind], layer)
            # the site's activation is what the TransformerLens hook reads
            reference = references[(kind, layer)]
            scale = reference.abs().max().item()
            torch.testing.assert_close(run.captured(site, site_layer).float(), reference.float(),
                                       rtol=1e-5, atol=1e-5 * scale)


class _Stub:
    """Any object with encode/decode that names its hook, like a sae_lens SAE."""

    def __init__(self, hook_name, d_in):
        self.cfg = type("Cfg", (), {"metadata": type("Meta", (), {"hook_name": hook_name})(), "d_in": d_in})()

    def encode(self, x):
        return x

    def decode(self, f):
        return f


def test_hook_names_map_to_engine_sites_bundled(bundled_model):
    _check_mapping(bundled_model, "gpt2", "The capital of Veldora is")


def test_hook_names_map_to_engine_sites_llama(llama_model):
    _check_mapping(llama_model, "llama", PROMPT)


def test_sae_site_of_sae_lens_object_and_nbinterp_sae(bundled_model):
    reference = sae_lens.SAE.load_from_disk(BUNDLED_SAE_DIR)
    assert sae_site(reference, bundled_model) == ("resid_pre", 3)
    sae = bundled_sae()
    assert sae_site(sae, bundled_model) == ("resid_pre", 3) == sae.site


@pytest.mark.parametrize("hook, needle", [
    ("blocks.1.hook_resid_mid", "blocks.1.hook_resid_mid"),
    ("blocks.0.attn.hook_z", "supported hooks"),
    ("embed", "supported hooks"),
])
def test_unknown_hook_is_a_clear_error(bundled_model, hook, needle):
    with pytest.raises(NbinterpError, match="supported hooks") as info:
        sae_site(_Stub(hook, 128), bundled_model)
    assert needle in str(info.value)


def test_layer_out_of_range_and_width_mismatch(bundled_model, llama_model):
    with pytest.raises(NbinterpError, match=r"blocks\.4\.hook_resid_pre.*layers 0-3"):
        sae_site(_Stub("blocks.4.hook_resid_pre", 128), bundled_model)
    with pytest.raises(NbinterpError, match=r"d_in=32.*another model"):
        sae_site(_Stub("blocks.1.hook_resid_pre", 32), bundled_model)
    # neurons are d_mlp wide, not d_model
    assert sae_site(_Stub("blocks.1.mlp.hook_post", llama_model.d_mlp), llama_model) == ("neurons", 1)
    with pytest.raises(NbinterpError, match="d_in=32"):
        sae_site(_Stub("blocks.1.mlp.hook_post", llama_model.d_model), llama_model)
    with pytest.raises(NbinterpError, match="names no hook"):
        sae_site(object(), bundled_model)


# ------------------------------------------------------------ loader errors
def test_missing_files(tmp_path):
    with pytest.raises(NbinterpError, match="no SAE directory"):
        load_sae(tmp_path / "nowhere")
    (tmp_path / "cfg.json").write_text("{}")
    with pytest.raises(NbinterpError, match="sae_weights.safetensors missing"):
        load_sae(tmp_path)


def _rewrite_cfg(folder, **changes):
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(changes)
    (folder / "cfg.json").write_text(json.dumps(cfg))


def test_unknown_architecture_and_shape_mismatch(tmp_path):
    _sae_lens_sae("standard").save_model(tmp_path)
    _rewrite_cfg(tmp_path, architecture="matryoshka_batchtopk")
    with pytest.raises(NbinterpError, match="matryoshka_batchtopk.*supported: standard, jumprelu, topk"):
        load_sae(tmp_path)
    _rewrite_cfg(tmp_path, architecture="standard", d_sae=D_SAE + 1)
    with pytest.raises(NbinterpError, match=rf"W_\w+ has shape .*d_sae={D_SAE + 1} make it"):
        load_sae(tmp_path)
    _rewrite_cfg(tmp_path, d_sae=D_SAE, architecture="jumprelu")
    with pytest.raises(NbinterpError, match="threshold"):
        load_sae(tmp_path)
    _rewrite_cfg(tmp_path, architecture="standard", normalize_activations="layer_norm")
    with pytest.raises(NbinterpError, match="layer_norm"):
        load_sae(tmp_path)


def test_input_width_is_checked():
    sae = bundled_sae()
    with pytest.raises(NbinterpError, match="d_in=128"):
        sae.encode(torch.zeros(3, 64))
    with pytest.raises(NbinterpError, match="d_sae=512"):
        sae.decode(torch.zeros(3, 64))


# ------------------------------------------------------------ the bundled SAE
@pytest.fixture(scope="module")
def bundled_weights():
    return load_file(str(BUNDLED_SAE_DIR / "sae_weights.safetensors"))


def _plain_topk_encode(weights, x, k):
    """Independent topk SAE: relu of the k largest (x - b_dec) W_enc + b_enc."""
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values.clamp(min=0))


def _hidden_states(bundled_model, texts, layer, batch=100):
    """HF hidden_states[layer] (the stream entering block `layer`) of each text, unpadded.
    Right padding with a mask: real tokens never see the pads."""
    tokenizer, out = bundled_model.tokenizer, []
    ids = [tokenizer(text).input_ids for text in texts]
    with torch.no_grad():
        for start in range(0, len(ids), batch):
            chunk = ids[start:start + batch]
            width = max(map(len, chunk))
            input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, seq in enumerate(chunk):
                input_ids[row, :len(seq)], mask[row, :len(seq)] = torch.tensor(seq), 1
            states = bundled_model.hf(input_ids=input_ids, attention_mask=mask,
                                      output_hidden_states=True).hidden_states[layer]
            out += [states[row, :len(seq)] for row, seq in enumerate(chunk)]
    return out


def test_bundled_sae_is_small_and_loads_in_sae_lens(bundled_model):
    assert (BUNDLED_SAE_DIR / "sae_weights.safetensors").stat().st_size < 5e6
    sae, reference = bundled_sae(), sae_lens.SAE.load_from_disk(BUNDLED_SAE_DIR)
    assert (sae.architecture, sae.k, sae.d_sae, sae.hook_name) == ("topk", CARD["k"], CARD["d_sae"], CARD["hook_name"])
    x = torch.cat(_hidden_states(bundled_model, ["The capital of Veldora is Quorn"], 3))
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), reference.encode(x), rtol=F32_TOL, atol=F32_TOL * x.abs().max().item())
        torch.testing.assert_close(sae(x), reference(x), rtol=F32_TOL, atol=F32_TOL * x.abs().max().item())


def test_bundled_card_reconstruction_figures(bundled_model, bundled_weights):
    """Explained variance, L0 and dead fraction recomputed on the card's held-out
    prompts from HF hidden states and a plain-torch encoder."""
    site, layer = CARD["site"]
    assert site == "resid_pre"
    texts = [f"{e.prompt} {e.target}" for task in tasks.TASKS
             for e in tasks.examples(task, 120, seed=11, split="test")]
    assert CARD["held_out"]["prompts"].startswith("tasks.examples(task, 120, seed=11, split='test')")
    x = torch.cat(_hidden_states(bundled_model, texts, layer))
    assert len(x) == CARD["held_out"]["n_tokens"]
    f = _plain_topk_encode(bundled_weights, x, CARD["k"])
    x_hat = f @ bundled_weights["W_dec"] + bundled_weights["b_dec"]
    explained = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    # The card rounds to 4 decimals and was measured through the engine's padded
    # batches: float32 differences of ~1e-6 relative, far below 1e-3.
    assert abs(explained.item() - CARD["held_out"]["explained_variance"]) < 1e-3
    assert explained > 0.9
    # the SAE's own helpers say the same
    sae = bundled_sae()
    assert abs(sae.explained_variance(x) - explained.item()) < 1e-4
    torch.testing.assert_close(sae.reconstruction_error(x).mean(), 1 - explained, rtol=1e-4, atol=1e-5)
    l0 = (f > 0).sum(-1).float().mean().item()
    assert abs(l0 - CARD["held_out"]["l0"]) < 0.01
    dead = ((f > 0).sum(0) == 0).float().mean().item()
    assert abs(dead - CARD["held_out"]["dead_fraction"]) <= 2 / CARD["d_sae"]  # a near-tie may flip a rare feature


def _auroc(score, positive):
    """Mann-Whitney AUROC from average ranks (ties count half), independent of the script's pairwise count."""
    score = score.contiguous()
    ordered = score.sort().values
    below = torch.searchsorted(ordered, score, right=False)
    through = torch.searchsorted(ordered, score, right=True)
    ranks = (below + through + 1).double() / 2  # mean 1-based rank of each value's tie group
    n_pos = int(positive.sum())
    n_neg = len(score) - n_pos
    return ((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()


def test_bundled_concept_features_separate_their_groups(bundled_model, bundled_weights):
    """The card's planted-concept features, on fresh held-out prompts (a seed
    the script never saw), separate their groups."""
    seed, layer, k = 303, CARD["site"][1], CARD["k"]
    concepts = CARD["concepts"]

    def features_at(examples, position):
        xs = _hidden_states(bundled_model, [e.prompt for e in examples], layer)
        return _plain_topk_encode(bundled_weights, torch.stack([x[position(e)] for x, e in zip(xs, examples)]), k)

    bias = tasks.examples("bias", 120, seed=seed, split="test")
    f = features_at(bias, lambda e: len(e.prompt.split()))
    group_a = torch.tensor([e.meta["group"] == "A" for e in bias])
    assert _auroc(f[:, concepts["bias_group"]["features"]["A"]["feature"]], group_a) > 0.95
    assert _auroc(f[:, concepts["bias_group"]["features"]["B"]["feature"]], ~group_a) > 0.95

    context = tasks.examples("context_override", 480, seed=seed, split="test", **tasks.CONTEXT_VARIANTS["plain"])
    f = features_at(context, lambda e: len(e.prompt.split()))
    scores = [_auroc(f[:, entry["feature"]], torch.tensor([e.meta["context_answer"] == capital for e in context]))
              for capital, entry in concepts["context_answer"]["features"].items()
              if any(e.meta["context_answer"] == capital for e in context)]
    assert len(scores) > 40 and sum(scores) / len(scores) > 0.9

    facts = tasks.examples("facts", 480, seed=seed, split="test")
    f = features_at(facts, lambda e: 1 + e.prompt.split().index(e.meta["country"]))
    scores = [_auroc(f[:, entry["feature"]], torch.tensor([e.meta["country"] == country for e in facts]))
              for country, entry in concepts["country"]["features"].items()
              if any(e.meta["country"] == country for e in facts)]
    assert len(scores) > 40 and sum(scores) / len(scores) > 0.9


def test_ni_load_sae_is_the_loader():
    assert ni.load_sae is load_sae
    assert isinstance(ni.load_sae(Path(BUNDLED_SAE_DIR)), SparseAutoencoder)
