"""Attribution of every attention edge (one forward + one backward) against
exhaustive exact knockout, on the bundled model and on a GPT-2-small-sized
random-init model (12 layers x 12 heads, d_model 768, vocabulary 50,257),
at T = 32, 64, 128 tokens. Three methods: the linear estimate, the QK fix
(both from the same forward + backward: "estimate s"), and the default hybrid
(QK fix + exact knockouts of each row's dominant edges: "hybrid s" in all).

Exhaustive knockout runs for real only where its projected time fits
--budget seconds; otherwise its time is extrapolated from measured batched
forwards (and printed as such), and the accuracy figures are those of the
largest estimates only (a pool, said so in the table).

    python benchmarks/bench_attribution.py [--budget 300] [--lengths 32 64 128]
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time

import torch

import nbinterp as ni
from nbinterp.interventions import batch
from nbinterp.analysis.attribution import METHODS, compute_attribution, causally_zero
from nbinterp.analysis.estimate_stats import Summary

K = 10
QK_SHARPEN = 4.0


def gpt2_small_random() -> ni.Model:
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    config = tf.GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)
    hf = tf.GPT2LMHeadModel(copy.deepcopy(config)).eval()
    with torch.no_grad():
        # Random init leaves attention near-uniform: sharpen the query and key
        # projections only (scaling values too, as the small test models do,
        # makes a 12-layer stack chaotic).
        for block in hf.transformer.h:
            block.attn.c_attn.weight[:, : 2 * config.n_embd].mul_(QK_SHARPEN)
    vocab = {f"t{i}": i for i in range(config.vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return ni.load(hf, tokenizer=tf.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="t0"))


def bundled_prompt(model: ni.Model, n_tokens: int, rng: random.Random) -> tuple[torch.Tensor, int, int]:
    """<bos> s s[:k] with the right length: the induction task; target s[k]."""
    from nbinterp.bundled import tasks

    pool = tasks.vocabulary()[len(tasks.SPECIAL_TOKENS):]
    half = n_tokens // 2
    seq = rng.sample(pool, half)
    k = n_tokens - 1 - half  # <bos> + half + k tokens
    ids = model.tokenize(" ".join(seq + seq[:k]))[:, :n_tokens]
    assert ids.shape[1] == n_tokens, ids.shape
    target = model.token_id(seq[k])
    foil = model.token_id(next(w for w in seq if w != seq[k] and w != seq[k - 1]))
    return ids, target, foil


def random_prompt(model: ni.Model, n_tokens: int, rng: random.Random) -> tuple[torch.Tensor, int, int]:
    half = [rng.randrange(model.shape.vocab_size) for _ in range(n_tokens // 2 + 1)]
    ids = torch.tensor([(half + half)[:n_tokens]])
    return ids, half[n_tokens - len(half)], half[0]


def bench(model: ni.Model, name: str, n_tokens: int, prompt, budget: float, rng: random.Random) -> dict:
    ids, target, foil = prompt(model, n_tokens, rng)
    compute_attribution(model, ids, target, foil, exact_budget=0)  # warm-up
    started = time.perf_counter()
    compute_attribution(model, ids, target, foil, exact_budget=0)
    t_attr = time.perf_counter() - started
    started = time.perf_counter()
    att = compute_attribution(model, ids, target, foil)
    t_hybrid = time.perf_counter() - started
    valid = ~att.dense_edge_effects("linear").isnan()  # L*H*T^2: the lengths here are short
    to_run = valid & ~causally_zero(model.n_layers, n_tokens, n_tokens - 1)
    n_edges, n_run = int(valid.sum()), int(to_run.sum())
    rows = batch.batch_rows(model, n_tokens)
    # per-forward time from two full batches
    metric = att._metric()
    sample = [tuple(e) for e in to_run.nonzero()[: 2 * max(1, rows - 1)].tolist()]
    started = time.perf_counter()
    batch.knockout_effects(model, ids, sample, metric, rows)
    per_forward = (time.perf_counter() - started) / max(1, -(-len(sample) // max(1, rows - 1)))
    projected = per_forward * -(-n_run // max(1, rows - 1))  # one row of each forward is the clean one
    row = dict(model=name, T=n_tokens, edges=n_edges, run=n_run, rows=rows, t_attr=t_attr, t_hybrid=t_hybrid,
               n_exact=len(att.measured_edges()), per_forward=per_forward)
    if projected <= budget:
        exact = att.exhaustive_edges()
        row.update(t_exh=exact.seconds, exh_measured=True)
        for method in METHODS:
            row[method] = att.compare(exact, K, method)
    else:
        row.update(t_exh=projected, exh_measured=False)
        # No full reference: measure the union of the methods' top 100.
        keys = sorted({e[:4] for m in METHODS for e in att.top_edges(100, m)})
        measured = batch.knockout_effects(model, ids, keys, metric, rows).numpy()
        for method in METHODS:
            dense = att.dense_edge_effects(method)
            est = [float(dense[k]) for k in keys]
            row[method] = Summary.of(est, measured, K, f"pool of {len(keys)} top edges")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=300.0, help="run exhaustive knockout when projected under this many seconds")
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--models", nargs="+", default=["bundled", "gpt2-small"])
    args = parser.parse_args()
    rng = random.Random(0)
    results = []
    for name in args.models:
        model = ni.load() if name == "bundled" else gpt2_small_random()
        prompt = bundled_prompt if name == "bundled" else random_prompt
        for n_tokens in args.lengths:
            row = bench(model, name, n_tokens, prompt, args.budget, rng)
            results.append(row)
            print(_line(row), file=sys.stderr, flush=True)
    print(f"\nattribution (1 forward + 1 backward, all edges) vs exhaustive exact knockout; torch threads {torch.get_num_threads()}")
    print("accuracy vs exhaustive over every edge where it ran; otherwise over a pool of the largest estimates (scope column)\n")
    header = f"{'model':<11}{'T':>4}{'edges':>9}{'estimate s':>11}{'hybrid s (exact)':>18}{'exhaustive s':>20}   " \
             f"{'Spearman lin/fix/hybrid':>24}{'recall@10 lin/fix/hybrid':>26}{'MAE lin/fix/hybrid':>30}   scope"
    print(header)
    print("-" * len(header))
    for row in results:
        print(_line(row))


def _line(row: dict) -> str:
    s = [row[m] for m in ("linear", "qk_fix", "hybrid")]
    exh = f"{row['t_exh']:.1f}" + ("" if row["exh_measured"] else " (extrap.)")
    hybrid = f"{row['t_hybrid']:.3f} ({row['n_exact']})"
    return (f"{row['model']:<11}{row['T']:>4}{row['edges']:>9}{row['t_attr']:>11.3f}{hybrid:>18}{exh:>20}   "
            f"{'/'.join(f'{x.spearman:.3f}' for x in s):>24}{'/'.join(f'{x.recall_at_k:.2f}' for x in s):>26}"
            f"{'/'.join(f'{x.mae:.2e}' for x in s):>30}   {s[0].scope}")


if __name__ == "__main__":
    main()
