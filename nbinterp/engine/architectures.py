"""One uniform view of decoder-only transformers: where the layers, attention
calls, per-head inputs of the output projection and MLPs live for each
architecture, and how many heads / key-value groups it has.

Adding an architecture means adding one `Architecture` row below. A family
qualifies when its attention module calls transformers' attention interface
(q, k, v and the mask are read there), and its attention and MLP are modules
whose outputs are their writes to the residual stream.

Parallel blocks (GPT-J, Phi, GPT-NeoX with use_parallel_residual) compute
x + attn(norm(x)) + mlp(norm'(x)): the MLP reads the block's input, not the
stream after attention. The per-layer captures mean the same in both layouts:
`resid_pre` is the block's input, `attn_out` and `mlp_out` are the attention's
and the MLP's writes, and resid_pre(l + 1) = resid_pre(l) + attn_out(l) +
mlp_out(l) whenever the block adds its writes without a post-norm. What
differs is causal: patching or ablating `attn_out` of layer l reaches that
layer's MLP only in sequential blocks; in parallel ones it first reaches
layer l + 1.

Not in the table (transformers 5.24): the ALiBi families (BLOOM, MPT, Falcon
with alibi=True) compute attention inline instead of calling the attention
interface, and BLOOM's attention and MPT's MLP add the residual inside the
module; Cohere scales its logits after the unembedding.

OPT has no MLP module (fc1 / fc2 sit on the decoder layer, which flattens the
tokens to [B*T, d] before them): its MLP's write is fc2's output, so the row
names fc2 as the MLP and as its own down projection (`mlp_down=""`), and the
trace views the MLP's tensors as [B, T, ...]. Its post-norm blocks
(opt-350m) and its projected embeddings are refused (`refuse_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from nbinterp.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class Architecture:
    """Module paths, relative to the model root, for one family."""

    layers: str  # the list of decoder blocks
    attention: str  # attention module, relative to a block
    out_proj: str  # output projection, relative to the attention module
    mlp: str  # MLP module, relative to a block
    mlp_down: str  # MLP down projection, relative to the MLP (its input = neuron activations)
    final_norm: str
    unembed: str
    embed: str
    conv1d_out_proj: bool = False  # GPT-2's Conv1D stores weight as [in, out]
    # What the QK decomposition needs to rebuild a score from residual parts:
    input_norm: str | None = None  # the block's input norm, relative to a block
    qk_projection: str | None = None  # a key of QK_PROJECTIONS
    position_embedding: str | None = None  # learned absolute positions, relative to the model root
    rotary: str | None = None  # the model's rotary module (gives cos, sin), relative to the model root
    # OPT multiplies the query projection's output by head_dim ** -0.5 and calls
    # the attention interface with scaling=1.0: the query side of a QK
    # decomposition carries that factor.
    query_prescaled: bool = False
    # config -> why this family's config is not read correctly (None when it is)
    refuse_config: Callable[[Any], str | None] | None = None


_LLAMA_LIKE = Architecture(
    layers="model.layers",
    attention="self_attn",
    out_proj="o_proj",
    mlp="mlp",
    mlp_down="down_proj",
    final_norm="model.norm",
    unembed="lm_head",
    embed="model.embed_tokens",
    input_norm="input_layernorm",
    qk_projection="split",
    rotary="model.rotary_emb",
)

def _opt_refusal(config: Any) -> str | None:
    """OPT configs whose stream is not what the engine's captures assume."""
    if not getattr(config, "do_layer_norm_before", True):
        # post-norm blocks: the stream between blocks is normalised after each
        # write, so resid_pre(l + 1) != resid_pre(l) + attn_out(l) + mlp_out(l),
        # and there is no final norm for the logit lens
        return ("do_layer_norm_before=False (post-norm blocks, as in facebook/opt-350m): the residual stream "
                "is re-normalised after every attention and MLP write, so per-component effects, the logit "
                "lens and the QK decomposition would be wrong; the other OPT sizes (125m, 1.3b, ...) are pre-norm")
    if getattr(config, "word_embed_proj_dim", None) not in (None, config.hidden_size):
        return (f"word_embed_proj_dim={config.word_embed_proj_dim} != hidden_size={config.hidden_size} "
                "(project_in / project_out around the blocks): the logit lens and direct effects would skip "
                "project_out")
    if getattr(config, "_remove_final_layer_norm", False):
        return "_remove_final_layer_norm=True: there is no final norm for the logit lens to apply"
    return None


ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": Architecture(
        layers="transformer.h",
        attention="attn",
        out_proj="c_proj",
        mlp="mlp",
        mlp_down="c_proj",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        embed="transformer.wte",
        conv1d_out_proj=True,
        input_norm="ln_1",
        qk_projection="gpt2_conv1d",
        position_embedding="transformer.wpe",
    ),
    "gpt_neox": Architecture(
        layers="gpt_neox.layers",
        attention="attention",
        out_proj="dense",
        mlp="mlp",
        mlp_down="dense_4h_to_h",
        final_norm="gpt_neox.final_layer_norm",
        unembed="lm_head",
        embed="gpt_neox.embed_in",
        input_norm="input_layernorm",
        qk_projection="neox_fused",
        rotary="gpt_neox.rotary_emb",
    ),
    # Learned absolute positions (wpe), multi-query attention (one key/value
    # head) by default, q/k/v fused in one nn.Linear: the QK decomposition does
    # not read that fused multi-query layout yet.
    "gpt_bigcode": Architecture(
        layers="transformer.h",
        attention="attn",
        out_proj="c_proj",
        mlp="mlp",
        mlp_down="c_proj",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        embed="transformer.wte",
        position_embedding="transformer.wpe",
    ),
    # Parallel blocks (see the module docstring): one input norm feeds attention and
    # MLP alike. Phi rotates only part of each head (partial_rotary_factor),
    # which the QK decomposition's rotation handles like NeoX's.
    "phi": Architecture(
        layers="model.layers",
        attention="self_attn",
        out_proj="dense",
        mlp="mlp",
        mlp_down="fc2",
        final_norm="model.final_layernorm",
        unembed="lm_head",
        embed="model.embed_tokens",
        input_norm="input_layernorm",
        qk_projection="split",
        rotary="model.rotary_emb",
    ),
    # Parallel blocks; GPT-J rotates interleaved pairs (rotate_every_two), not
    # halves, so its scores are not decomposed.
    "gptj": Architecture(
        layers="transformer.h",
        attention="attn",
        out_proj="out_proj",
        mlp="mlp",
        mlp_down="fc_out",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        embed="transformer.wte",
    ),
    # Learned positions (offset by 2, counted from the attention mask), a
    # pre-scaled query; the MLP is fc2 itself (see the module docstring).
    "opt": Architecture(
        layers="model.decoder.layers",
        attention="self_attn",
        out_proj="out_proj",
        mlp="fc2",
        mlp_down="",
        final_norm="model.decoder.final_layer_norm",
        unembed="lm_head",
        embed="model.decoder.embed_tokens",
        input_norm="self_attn_layer_norm",
        qk_projection="split",
        position_embedding="model.decoder.embed_positions",
        query_prescaled=True,
        refuse_config=_opt_refusal,
    ),
    **{name: _LLAMA_LIKE for name in ("llama", "mistral", "qwen2", "olmo")},
    # Gemma scales embeddings, normalises after attention and soft-caps scores;
    # Qwen3 / OLMo2 normalise q and k per head: their scores are not decomposed.
    **{
        name: replace(_LLAMA_LIKE, input_norm=None, qk_projection=None, rotary=None)
        for name in ("qwen3", "gemma", "gemma2", "olmo2")
    },
}


# How one head's query and key projections sit in the attention module's
# weights: layout -> the modules holding them (relative to the attention module).
QK_PROJECTIONS = {
    "gpt2_conv1d": ("c_attn",),  # Conv1D, weight [in, 3 H D]: all queries | all keys | all values
    "neox_fused": ("query_key_value",),  # Linear, weight [H 3 D, in]: per head its q, k, v
    "split": ("q_proj", "k_proj"),  # Linear each, weight [H D, in] / [H_kv D, in]
}


def head_qk_projection(
    arch: Architecture, weights: tuple, head: int, side: str, shape: "ModelShape",
) -> tuple[Any, Any]:
    """One head's query (side "query") or key projection as (W [d_model, D], bias [D] or None),
    from the (weight, bias) pairs of `QK_PROJECTIONS[arch.qk_projection]`'s modules."""
    d_head, n_heads = shape.head_dim, shape.n_heads
    if arch.qk_projection == "gpt2_conv1d":
        (weight, bias), = weights
        offset = (0 if side == "query" else n_heads * d_head) + head * d_head
        return weight[:, offset : offset + d_head], None if bias is None else bias[offset : offset + d_head]
    if arch.qk_projection == "neox_fused":
        (weight, bias), = weights
        offset = head * 3 * d_head + (0 if side == "query" else d_head)
        return weight[offset : offset + d_head].T, None if bias is None else bias[offset : offset + d_head]
    if arch.qk_projection == "split":
        weight, bias = weights[0 if side == "query" else 1]
        index = head if side == "query" else head // (n_heads // shape.n_kv_heads)
        rows = slice(index * d_head, (index + 1) * d_head)
        weight, bias = weight[rows].T, None if bias is None else bias[rows]
        if side == "query" and arch.query_prescaled:
            scale = d_head**-0.5
            weight, bias = weight * scale, None if bias is None else bias * scale
        return weight, bias
    raise UnsupportedArchitectureError(f"no query/key projection layout {arch.qk_projection!r} in QK_PROJECTIONS")


def get_path(root: Any, path: str) -> Any:
    """`get_path(model, "model.layers")`, for HF modules and nnsight envoys alike.
    Empty parts name the node itself (OPT's MLP is its own down projection: "fc2.")."""
    node = root
    for part in path.split("."):
        if part:
            node = getattr(node, part)
    return node


def _has_path(root: Any, path: str) -> bool:
    try:
        get_path(root, path)
        return True
    except AttributeError:
        return False


@dataclass(frozen=True)
class ModelShape:
    """Head and width figures read from the config."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    vocab_size: int
    max_positions: int | None
    final_logit_softcap: float | None = None  # Gemma2 squashes logits after the unembedding
    norm: str = "layernorm"  # the blocks' norm: "layernorm" or "rmsnorm" (the config names its epsilon)
    norm_eps: float = 1e-5


def _config_value(config: Any, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def read_shape(config: Any) -> ModelShape:
    config = getattr(config, "text_config", None) or config
    d_model = _config_value(config, "hidden_size", "n_embd", "d_model")
    n_heads = _config_value(config, "num_attention_heads", "n_head")
    n_layers = _config_value(config, "num_hidden_layers", "n_layer")
    missing = [
        name
        for name, value in (("hidden size", d_model), ("attention heads", n_heads), ("layers", n_layers))
        if value is None
    ]
    if missing:
        raise UnsupportedArchitectureError(
            f"the model config ({type(config).__name__}) does not say its {', '.join(missing)}; "
            "nbinterp supports decoder-only language models such as GPT-2, GPT-NeoX, GPT-J, "
            "GPT-BigCode, OPT, Phi, Llama, Mistral, Qwen2 and Gemma2."
        )
    n_kv_heads = _config_value(config, "num_key_value_heads") or n_heads
    head_dim = _config_value(config, "head_dim") or d_model // n_heads
    return ModelShape(
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        d_model=d_model,
        vocab_size=_config_value(config, "vocab_size"),
        max_positions=_config_value(config, "n_positions", "max_position_embeddings"),
        final_logit_softcap=_config_value(config, "final_logit_softcapping"),
        norm="rmsnorm" if _config_value(config, "rms_norm_eps") is not None else "layernorm",
        norm_eps=_config_value(config, "rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps") or 1e-5,
    )


def architecture_for(hf_model: Any) -> Architecture:
    """The adapter for a Hugging Face causal LM, or a clear error naming what is missing."""
    model_type = getattr(hf_model.config, "model_type", None)
    candidates = [ARCHITECTURES[model_type]] if model_type in ARCHITECTURES else []
    # Unknown model types that are built like Llama (most new ones) still work.
    candidates += [a for a in dict.fromkeys(ARCHITECTURES.values()) if a not in candidates]
    best, best_missing = None, None
    for arch in candidates:
        missing = _missing_parts(hf_model, arch)
        if not missing:
            problem = arch.refuse_config and arch.refuse_config(hf_model.config)
            if problem:
                raise UnsupportedArchitectureError(
                    f"nbinterp does not support this {model_type!r} config: {problem}"
                )
            return arch
        if best_missing is None or len(missing) < len(best_missing):
            best, best_missing = arch, missing
    raise UnsupportedArchitectureError(
        f"nbinterp has no adapter for model type {model_type!r} ({type(hf_model).__name__}). "
        f"The closest known layout lacks: {', '.join(best_missing)}. Supported: GPT-2, GPT-NeoX, "
        "GPT-J, GPT-BigCode/StarCoder, OPT, Phi, Llama, Mistral, Qwen2/3, Gemma/Gemma2, OLMo; to add one, "
        "describe its module paths in nbinterp.engine.architectures.ARCHITECTURES."
    )


def _missing_parts(hf_model: Any, arch: Architecture) -> list[str]:
    missing = [p for p in (arch.layers, arch.final_norm, arch.unembed, arch.embed) if not _has_path(hf_model, p)]
    if missing:
        return missing
    block = get_path(hf_model, arch.layers)[0]
    for path in (arch.attention, f"{arch.attention}.{arch.out_proj}", arch.mlp, f"{arch.mlp}.{arch.mlp_down}"):
        if not _has_path(block, path):
            missing.append(f"{arch.layers}[i].{path}")
    return missing


def attention_call(attention_envoy: Any) -> Any:
    """The attention-interface call inside an attention module's forward.

    nnsight names source operations by occurrence, and the names move between
    versions (`_0` in 0.7, `_1` in 0.8.1), so look the call up by its name prefix.
    """
    names = [n for n in attention_envoy.source.names if n.startswith("attention_interface_")]
    if not names:
        raise UnsupportedArchitectureError(
            f"no attention_interface call found in {type(attention_envoy._module).__name__}.forward: "
            "nbinterp reads q, k and v where transformers' attention interface is called"
        )
    return getattr(attention_envoy.source, names[-1])
