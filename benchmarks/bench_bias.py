"""ni.bias speed: the gap over a data set and every head's and MLP's exact share.

1. The bundled model, 200 prompts of the planted profession bias (two
   templates, so two token lengths): the gap with its interval and p-value,
   then every component zero-ablated alone on every row. Target: <= 10 s.
2. A GPT-2-small-sized random-init model (12 layers, 12 heads, d_model 768,
   vocabulary 50,257), the same number of prompts of word tokens in two
   lengths, against one batched forward of the data set (plain Hugging Face,
   right-padded with an attention mask), side by side in this process:
   - all exact, every forward from block 0 (the old path): ~157 forwards' worth;
   - all exact, each forward starting at its components' lowest layer from
     the rows' streams (same numbers): ~(1 + 156 x 6.5 / 12) forwards' worth;
   - ni.bias's default (the clean metrics and streams, every share's
     attribution-patching estimate, the largest |estimates| measured within
     EXACT_BUDGET forwards of the data set). Target: <= 25x.
3. Memory vs rows: ni.bias's default on the GPT-2-sized model in a fresh
   process per row count, peak resident memory above the loaded model's
   (Linux's high-water mark, restarted after loading; and the default's time
   over one batched forward at that size).
   Rows are chunked per forward; kept are float64 [components, rows]
   numbers and the rows' streams (capped by dataset_runs.STREAM_BYTES).

    python benchmarks/bench_bias.py [--rows 200] [--gpt2-rows 200] [--threads 1] [--repeats 1] [--device cpu]
                                    [--memory-rows 100 200]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch

import nbinterp as ni
from nbinterp.analysis import dataset_runs
from nbinterp.analysis.bias import EXACT_BUDGET, measure_bias
from nbinterp.analysis.datasets import PromptSet
from nbinterp.bundled import tasks

SMALL_VOCAB = 50257


def reset_peak_rss() -> float:
    """Linux: restart the resident high-water mark here (loading the model set a
    higher one than the analysis reaches); returns the resident MB now."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _status_mb("VmRSS")


def high_water_mb() -> float:
    return _status_mb("VmHWM")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def bundled_case(n_rows: int) -> None:
    model = ni.load()
    half = n_rows // 2
    prompts = {g: [e.prompt for e in tasks.examples("bias", half, seed=1, group=g)] for g in ("A", "B")}
    measure_bias(model, prompts={g: p[:4] for g, p in prompts.items()}, target="doctor", foil="nurse").components  # warm-up
    forwards = model.forwards
    started = time.perf_counter()
    b = measure_bias(model, prompts=prompts, target="doctor", foil="nurse")
    gap_s = time.perf_counter() - started
    components = b.components
    total_s = time.perf_counter() - started
    print(f"bundled, {n_rows} prompts: gap {b.gap:.3f} CI [{b.ci[0]:.3f}, {b.ci[1]:.3f}] p {b.p_value:.4f} in "
          f"{gap_s:.2f} s; + {len(components)} components' exact shares: {total_s:.2f} s total "
          f"({model.forwards - forwards} forwards; target <= 10 s) -> {'OK' if total_s <= 10 else 'OVER'}")


def gpt2_small(device: str):
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, SMALL_VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    torch.manual_seed(0)
    hf = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=12, n_head=12, n_embd=768, vocab_size=SMALL_VOCAB)).eval()
    return hf.to(device), ni.load(hf, tokenizer=tokenizer)


def word_prompts(n_rows: int) -> PromptSet:
    """Two templates (6 and 10 words) x fillers; groups differ in one word."""
    templates = ["w11 {x} w12 w13 w14 w15", "w21 w22 w23 {x} w24 w25 w26 w27 w28 w29"]
    per_template = n_rows // 4
    fillers = {"y": [f"w{100 + i}" for i in range(per_template)]}
    templates = [t.replace("w12", "{y}") if "w12" in t else t.replace("w22", "{y}") for t in templates]
    return PromptSet.from_templates(templates, attribute="x", groups={"A": ["w5"], "B": ["w7"]}, fillers=fillers,
                                    target="w3", foil="w9")


def plain_forward(hf, data, device: str) -> float:
    """One right-padded forward of every row (the baseline), seconds."""
    ids = data.input_ids
    length = max(len(i) for i in ids)
    batch = torch.zeros(len(ids), length, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, i in enumerate(ids):
        batch[row, : len(i)], mask[row, : len(i)] = i, 1
    batch, mask = batch.to(device), mask.to(device)
    started = time.perf_counter()
    with torch.no_grad():
        hf(input_ids=batch, attention_mask=mask).logits[:, -1].float().sum().item()
    return time.perf_counter() - started


def gpt2_case(n_rows: int, repeats: int, device: str) -> None:
    hf, model = gpt2_small(device)
    data = word_prompts(n_rows).check(model)
    components = dataset_runs.every_component(model)
    plain_forward(hf, data, device)  # warm-up
    # each path over the mean of plain forwards timed just before and after it: a shared
    # machine's load drifts over minutes, so a ratio compares like with like
    ratios: dict[str, list[float]] = {"old": [], "skip": [], "hybrid": [], "clean": [], "estimates": []}
    forwards: list[float] = []
    for _ in range(repeats):
        before = plain_forward(hf, data, device)
        started = time.perf_counter()
        old = dataset_runs.component_metrics(model, data, components)
        old_s = time.perf_counter() - started
        between = plain_forward(hf, data, device)
        started = time.perf_counter()
        _, streams = dataset_runs.clean_run(model, data)
        skipped = dataset_runs.component_metrics(model, data, components, streams=streams)
        skip_s = time.perf_counter() - started
        between2 = plain_forward(hf, data, device)
        started = time.perf_counter()
        b = measure_bias(model, data.prompts, n_resamples=200)  # the clean metrics and streams
        clean_s = time.perf_counter() - started
        for _ in b.estimate_steps():  # made here only to time them apart: .components would make them
            pass
        estimates_s = time.perf_counter() - started - clean_s
        shares = b.components
        hybrid_s = time.perf_counter() - started
        after = plain_forward(hf, data, device)
        forwards += [before, between, between2, after]
        ratios["old"].append(2 * old_s / (before + between))
        ratios["skip"].append(2 * skip_s / (between + between2))
        for name, seconds in (("hybrid", hybrid_s), ("clean", clean_s), ("estimates", estimates_s)):
            ratios[name].append(2 * seconds / (between2 + after))
    forward = statistics.median(forwards)
    ratio = {name: statistics.median(r) for name, r in ratios.items()}
    difference = float((old.effects - skipped.effects).abs().max())
    error = b.estimate_error()
    print(f"gpt2-small (random init), {len(data)} prompts, {len(components)} components: one batched forward "
          f"{forward:.2f} s = 1x (median; {min(forwards):.2f}..{max(forwards):.2f} s), each path over the forwards "
          f"timed just before and after it (median of {repeats}):")
    print(f"  all exact, every block:          {ratio['old']:6.1f}x")
    print(f"  all exact, layer skip:           {ratio['skip']:6.1f}x (max |effect difference| {difference:.1e})")
    print(f"  ni.bias default (budget {EXACT_BUDGET:g}):    {ratio['hybrid']:6.1f}x -> "
          f"{'OK' if ratio['hybrid'] <= 25 else 'OVER'} (target <= 25x): {b.n_measured} measured, "
          f"{sum(not c.measured for c in shares)} estimated; clean forward + streams {ratio['clean']:.1f}x, "
          f"estimates {ratio['estimates']:.1f}x, exact {ratio['hybrid'] - ratio['clean'] - ratio['estimates']:.1f}x "
          f"for a cost of {b.exact_cost(b.exact_plan or []):.1f}")
    if error is not None:
        print(f"  estimates vs measured on {error.n}: max |share error| {error.max_abs_error:.3f}, "
              f"correlation {error.correlation if error.correlation is None else round(error.correlation, 3)}")


def memory_case(n_rows: int, device: str) -> None:
    """One row count in this process: rows, peak RSS above the model's (MB), and
    the default's time over one batched forward (measured after it: the plain
    forward's full logits would otherwise set the peak)."""
    hf, model = gpt2_small(device)
    data = word_prompts(n_rows).check(model)
    baseline = reset_peak_rss()
    started = time.perf_counter()
    measure_bias(model, data.prompts, n_resamples=200).components  # noqa: B018
    elapsed = time.perf_counter() - started
    peak = high_water_mb() - baseline
    plain_forward(hf, data, device)  # warm-up
    forward = min(plain_forward(hf, data, device) for _ in range(2))
    print(f"{len(data)} {peak:.0f} {elapsed / forward:.1f}")


def memory_vs_rows(row_counts: list[int], threads: int, device: str) -> None:
    figures = []
    for n_rows in row_counts:
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(n_rows), "--threads", str(threads),
                              "--device", device], check=True, capture_output=True, text=True).stdout.split()
        figures.append(f"{out[-3]} rows: +{out[-2]} MB ({out[-1]}x one forward)")
    print("gpt2-small ni.bias default, peak resident memory above the loaded model's: " + ", ".join(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--gpt2-rows", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-gpt2", action="store_true")
    parser.add_argument("--skip-bundled", action="store_true")
    parser.add_argument("--memory-rows", type=int, nargs="*", default=[100, 200])
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_case(args.memory_child, args.device)
        return
    if not args.skip_bundled:
        bundled_case(args.rows)
    if not args.skip_gpt2:
        gpt2_case(args.gpt2_rows, args.repeats, args.device)
    if args.memory_rows:
        memory_vs_rows(args.memory_rows, args.threads, args.device)


if __name__ == "__main__":
    main()
