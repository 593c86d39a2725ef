"""Issue 5's accuracy table: on the bundled model's planted tasks (the held-out
short prompts tests/test_attribution_bundled.py uses), each method's recall@10
and Spearman against knocking out every edge exactly, and the linear estimate vs
the QK fix on saturated edges (attention > 0.9).

    python benchmarks/bench_attribution_tasks.py
"""

from __future__ import annotations

import torch

import nbinterp as ni
from nbinterp.bundled import tasks
from nbinterp.analysis.attribution import METHODS, compute_attribution

N_PROMPTS, MAX_TOKENS, K, SATURATED = 2, 20, 10, 0.9


def main() -> None:
    model = ni.load()
    errors: dict[str, list[torch.Tensor]] = {"linear": [], "qk_fix": []}
    print(f"bundled model; recall@{K} / Spearman against exhaustive knockout of every edge that can reach the metric\n")
    print(f"{'task':<18}{'T':>4}{'exact edges':>13}{'hybrid s':>10}{'exhaustive s':>14}   "
          + "".join(f"{m:>18}" for m in METHODS))
    for task, variant in (("induction", {}), ("ioi", {}), ("context_override", tasks.CONTEXT_VARIANTS["plain"])):
        for example in tasks.short_examples(task, N_PROMPTS, MAX_TOKENS, **variant):
            att = compute_attribution(model, example.prompt, example.target, example.foil)
            exact = att.exhaustive_edges()
            cells = [att.compare(exact, K, m) for m in METHODS]
            print(f"{task:<18}{len(att.run):>4}{len(att.measured_edges()):>8} / {exact.n_measured:<5}{att.seconds:>8.2f}"
                  f"{exact.seconds:>14.2f}   " + "".join(f"{c.recall_at_k:>11.1f} / {c.spearman:.2f}" for c in cells))
            probs = torch.stack([att.run.attention(l) for l in range(model.n_layers)]).double()
            saturated = ~exact.effects.isnan() & (probs > SATURATED) & (exact.effects != 0)
            for method in errors:
                errors[method].append((att.dense_edge_effects(method) - exact.effects)[saturated].abs())
    linear, fixed = torch.cat(errors["linear"]), torch.cat(errors["qk_fix"])
    gain = linear - fixed
    print(f"\nsaturated edges (attention > {SATURATED}): {linear.numel()}; MAE linear {linear.mean():.4f}, "
          f"QK fix {fixed.mean():.4f}; paired gain {gain.mean():.4f} +- {gain.std() / gain.numel() ** 0.5:.4f} (s.e.), "
          f"QK fix closer on {(gain > 0).double().mean():.0%} of them")


if __name__ == "__main__":
    main()
