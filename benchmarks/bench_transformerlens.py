"""Head zero-ablation effects: nbinterp against TransformerLens on the same weights.

The quantity is each head's zero-ablation effect on the logit difference,
metric(head ablated) - metric(clean) with metric = logit(target) - logit(foil)
at the last position, for every head of the bundled model. nbinterp zeroes the
head's slice of the attention output projection's input (`model.run(ablate=
{(l, h): 0.0})`, batched here through `nbinterp.interventions.batch`);
TransformerLens zeroes `blocks.{l}.attn.hook_z[:, :, h]` of a HookedTransformer
built from the same GPT-2 state dict with each set of processing flags:

  (a) no processing   fold_ln, center_writing_weights, center_unembed and
                      fold_value_biases all False: the same computation, so
                      the two must agree to float32 rounding;
  (b) fold_value_biases=True alone;
  (c) from_pretrained's defaults (fold_ln, center_writing_weights,
      center_unembed and fold_value_biases all True);
  (d) (c) without fold_value_biases: shows the folding of LayerNorm and the
      centring change no ablation effect, only the value-bias folding does.

Value-bias folding moves each head's constant value term (b_V, and with
fold_ln also the LayerNorm bias's image ln1.b @ W_V) out of hook_z into the
layer's output bias b_O, so zeroing hook_z no longer removes it: the per-head
effect changes by design. Centring shifts every residual write (or every
logit) by a constant that LayerNorm (or the logit difference) cancels.

Printed per flag set: max |difference| over the 16 heads on the quickstart
prompt, and the median and max over the model card's 300 held-out IOI prompts
of that per-prompt max. About 35 CPU-seconds on one thread. Needs
transformer-lens, which nbinterp does not depend on (measured with 3.9.0):
`pip install transformer-lens`.

    python benchmarks/bench_transformerlens.py [--n 300] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

PROMPT = "When Mary and John went to the store , John gave a drink to"
TARGET, FOIL = "Mary", "John"

FLAG_SETS = {
    "(a) no processing": dict(fold_ln=False, center_writing_weights=False, center_unembed=False,
                              fold_value_biases=False),
    "(b) fold_value_biases=True alone": dict(fold_ln=False, center_writing_weights=False, center_unembed=False,
                                             fold_value_biases=True),
    "(c) from_pretrained defaults": dict(fold_ln=True, center_writing_weights=True, center_unembed=True,
                                         fold_value_biases=True),
    "(d) defaults, fold_value_biases=False": dict(fold_ln=True, center_writing_weights=True, center_unembed=True,
                                                  fold_value_biases=False),
}


def hooked_transformer(hf_model, flags: dict):
    """A HookedTransformer of the bundled GPT-2 (not a TransformerLens-named model,
    so the config is written out; `from_pretrained` would do the same conversion)."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
        from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
    except ImportError as error:
        raise SystemExit("this comparison needs TransformerLens: pip install transformer-lens") from error

    c = hf_model.config
    assert c.activation_function == "gelu_new" and not c.scale_attn_by_inverse_layer_idx, "config TL does not map"
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn="gelu_new",
        normalization_type="LN", eps=c.layer_norm_epsilon, positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel", dtype=torch.float32, device="cpu", default_prepend_bos=False,
    )
    with warnings.catch_warnings():  # TL 3.x steers users to TransformerBridge; HookedTransformer is what users compare with
        warnings.simplefilter("ignore", DeprecationWarning)
        tl = HookedTransformer(cfg, move_to_device=False)
    tl.load_and_process_state_dict(convert_gpt2_weights(hf_model, cfg), **flags)
    return tl.eval()


@torch.no_grad()
def tl_ablation_effects(tl, input_ids: torch.Tensor, target: int, foil: int) -> torch.Tensor:
    """[n_layers, n_heads] float64: row 0 of one batch is clean, row 1 + l*H + h has hook_z[l, h] zeroed."""
    n_layers, n_heads = tl.cfg.n_layers, tl.cfg.n_heads
    tokens = input_ids.expand(1 + n_layers * n_heads, -1)

    def zero(layer):
        def hook(z, hook):  # z: [batch, pos, head, d_head]
            for h in range(n_heads):
                z[1 + layer * n_heads + h, :, h] = 0.0
            return z
        return hook

    logits = tl.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{l}.attn.hook_z", zero(l)) for l in range(n_layers)])
    metric = (logits[:, -1, target] - logits[:, -1, foil]).double()
    return (metric[1:] - metric[0]).reshape(n_layers, n_heads)


def ni_ablation_effects(model, input_ids: torch.Tensor, target: str, foil: str) -> torch.Tensor:
    """[n_layers, n_heads] float64 zero-ablation effects through nbinterp's batched path."""
    from nbinterp.engine.plan import Metric
    from nbinterp.interventions import batch

    heads = [(l, h) for l in range(model.n_layers) for h in range(model.n_heads)]
    metric = Metric.of(model, target, foil, -1, input_ids.shape[1])
    return batch.ablation_effects(model, input_ids, heads, metric, rows=len(heads) + 1).reshape(
        model.n_layers, model.n_heads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="IOI prompts of the model card's test set (default 300)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import nbinterp as ni
    from nbinterp.bundled import tasks

    start = time.perf_counter()
    model = ni.load()
    card = ni.bundled_card()
    # the card's test set: n_test prompts drawn with test_seed from the held-out name pairs
    examples = tasks.examples("ioi", min(args.n, card["n_test"]), seed=card["test_seed"], split="test")
    prompts = [(PROMPT, TARGET, FOIL)] + [(e.prompt, e.target, e.foil) for e in examples]

    ids = [model.tokenize(p) for p, _, _ in prompts]
    ours = [ni_ablation_effects(model, i, t, f) for i, (_, t, f) in zip(ids, prompts)]
    largest = max(float(o.abs().max()) for o in ours)
    print(f"bundled model, {len(examples)} IOI prompts (card test_seed={card['test_seed']}) + the quickstart prompt; "
          f"largest |head effect| {largest:.2f} logits")
    print(f"{'TransformerLens flags':<40} {'quickstart':>11} {'IOI median':>11} {'IOI max':>9}   (max |diff| over heads, logits)")
    for name, flags in FLAG_SETS.items():
        tl = hooked_transformer(model.hf, flags)
        diffs = [float((tl_ablation_effects(tl, i, model.token_id(t), model.token_id(f)) - o).abs().max())
                 for i, (_, t, f), o in zip(ids, prompts, ours)]
        print(f"{name:<40} {diffs[0]:>11.3g} {statistics.median(diffs[1:]):>11.3g} {max(diffs[1:]):>9.3g}")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
