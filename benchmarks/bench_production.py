"""Production width: every user-facing call on a Llama-3-8B-width model (d_model
4,096, 32 query heads over 8 key/value heads, MLP 14,336, vocabulary 32,000)
cut to 2 layers, random init, float32 on CPU, beside a plain Hugging Face
forward and forward + backward measured in the same process, interleaved. Ratios are of
medians; the fastest repeat is printed too (the machine may be shared).

float32 only: bf16 matmuls on these CPUs run ~100x slower than float32, so a
bf16 figure here measures the CPU, not nbinterp; bf16 belongs on a GPU.

Calls, each timed alone (median of --repeats; every call is warmed up once at
T=16 first, so first-use costs such as nnsight's `.source` are not counted):
- HF forward: `hf(input_ids)` under no_grad (SDPA, the default).
- HF fwd+bwd: logit(target) - logit(foil) at the last position, `.backward()`
  (weight gradients included, as a plain user would run it); "HF fwd+bwd
  (acts)" is the tighter reference: parameters frozen, gradient to the input
  embeddings only (what the engine's `autograd.grad` of activations needs).
- model.run(prompt): last position's logits.
- attention view first data: `model.run(prompt, capture=["qkv"])`, then
  `layer_values(run, l, "probabilities")` + `head_thumbnails` for every layer.
- ablation update: `ablated_run(model, prompt, {"L1.H3": 0.0})` + `summarize`
  against the (already shown) unablated run.
- attribution: `compute_attribution(model, prompt, target, foil, exact_budget=0)`.
- patching batch: `effects_of(setup, 8 single-site sets)` (one batched forward
  of 8 + 2 reference rows); `prepare` runs once beforehand, untimed.
- logit lens: `compute_logit_lens(model, prompt, target=target)`.

target / foil are the clean run's top-2 next tokens; the corrupted prompt
changes one early token, the first position (of 1, T/4, T/2, T-2) where
`prepare` accepts the pair (a random model barely reacts to some tokens).

Memory: peak RSS increase over the RSS just before the call, in this process
(the model is built once: ~2.8 GB of weights). Before each call: gc and
malloc_trim, so "before" is what is held, not what the allocator kept. During
the call a thread samples VmRSS of /proc/self/status every 5 ms, and the
kernel's high-water mark VmHWM (reset through /proc/self/clear_refs just
before the call) catches peaks between samples.

    python benchmarks/bench_production.py [--quick] [--tokens 128 512] [--repeats 3]

Targets: every call's peak RSS increase under 16 GB; attribution <= 3x the HF
forward + backward.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers

import nbinterp as ni
from nbinterp.analysis.attribution import compute_attribution
from nbinterp.analysis.logit_lens import compute_logit_lens
from nbinterp.analysis.patching_sweep import effects_of, prepare
from nbinterp.errors import NbinterpError
from nbinterp.interventions.ablation import ablated_run, canonical_ablations, summarize
from nbinterp.widgets.attention import head_thumbnails, layer_values

GB = 1024**3
RSS_TARGET_GB = 16.0
ATTRIBUTION_TARGET = 3.0
ABLATION = {"L1.H3": 0.0}


# ------------------------------------------------------------------ the model
def llama_8b_width() -> torch.nn.Module:
    config = tf.LlamaConfig(
        hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
        vocab_size=32000, num_hidden_layers=2, max_position_embeddings=8192,
    )
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=torch.float32).eval()


def word_level_tokenizer(vocab_size: int) -> tf.PreTrainedTokenizerFast:
    vocab = {f"w{i}": i for i in range(vocab_size)}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    return tf.PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="w0")


# ------------------------------------------------------------------ memory
def _status(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _reset_high_water() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # VmHWM := current RSS
        return True
    except OSError:
        return False


_libc = ctypes.CDLL("libc.so.6")


@dataclass
class Measured:
    seconds: float
    rss_increase: int
    forwards: int | None


def measure(call: Callable[[], Any], model: ni.Model) -> Measured:
    gc.collect()
    _libc.malloc_trim(0)
    before = _status("VmRSS:")
    hwm = _reset_high_water()
    peak = before
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _status("VmRSS:"))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    forwards = getattr(model, "forwards", None)
    sampler.start()
    started = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    peak = max(peak, _status("VmRSS:"), _status("VmHWM:") if hwm else 0)
    del result
    delta = None if forwards is None else model.forwards - forwards
    return Measured(seconds, peak - before, delta)


# ------------------------------------------------------------------ the calls
@dataclass
class Case:
    name: str
    call: Callable[[], Any]
    reference: str = "forward"  # which plain call the ratio is to
    samples: list[Measured] = field(default_factory=list)


def choose_patching_pair(model: ni.Model, ids: list[int], target: int, foil: int) -> tuple[Any, int]:
    """The setup and the corrupted position: the first early token whose change moves the metric enough."""
    n_tokens = len(ids)
    errors = []
    for position in dict.fromkeys([1, n_tokens // 4, n_tokens // 2, n_tokens - 2]):
        corrupted = list(ids)
        corrupted[position] = (ids[position] + 1) % model.shape.vocab_size
        try:
            return prepare(model, ids, corrupted, target, foil), position
        except NbinterpError as error:
            errors.append(f"position {position}: {error}")
    raise RuntimeError("prepare refused every corruption tried:\n" + "\n".join(errors))


def cases_for(model: ni.Model, hf: torch.nn.Module, ids: list[int], notes: list[str] | None) -> list[Case]:
    input_ids = torch.tensor([ids])
    baseline = model.run(ids)
    target, foil = baseline.logits_at(-1).topk(2).indices.tolist()
    setup, corrupted_at = choose_patching_pair(model, ids, target, foil)
    n_tokens = len(ids)
    last = n_tokens - 1
    patch_sets = [
        [("resid_pre", 1, None, corrupted_at)], [("resid_pre", 1, None, last)],
        [("attn_out", 0, None, last)], [("attn_out", 1, None, last)],
        [("mlp_out", 0, None, corrupted_at)], [("mlp_out", 1, None, last)],
        [("head", 0, 5, None)], [("head", 1, 3, None)],
    ]
    ablations = canonical_ablations(model, ABLATION)
    if notes is not None:
        notes.append(
            f"T={n_tokens}: target/foil = clean top-2 ids {target}/{foil}; corrupted: position {corrupted_at} "
            f"id +1; clean logit diff {setup.clean_logit_diff:.4g}, corrupted {setup.corrupted_logit_diff:.4g}; "
            f"patch sets {patch_sets}"
        )

    def hf_forward():
        with torch.no_grad():
            return hf(input_ids).logits[0, -1]

    def hf_forward_backward():
        logits = hf(input_ids).logits[0, -1]
        (logits[target] - logits[foil]).backward()
        hf.zero_grad(set_to_none=True)

    def hf_forward_backward_activations():
        params = [p for p in hf.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            embeds = hf.get_input_embeddings()(input_ids).detach().requires_grad_(True)
            logits = hf(inputs_embeds=embeds).logits[0, -1]
            (logits[target] - logits[foil]).backward()
            return embeds.grad
        finally:
            for p in params:
                p.requires_grad_(True)

    def run():
        return model.run(ids)

    def attention_first_data():
        run = model.run(ids, capture=["qkv"])
        return [head_thumbnails(layer_values(run, layer, "probabilities")) for layer in range(model.n_layers)]

    def ablation_update():
        run = ablated_run(model, ids, ablations)
        return summarize(model, run, baseline, k=10, target=target, foil=foil, ablations=ablations)

    def attribution():
        return compute_attribution(model, ids, target, foil, exact_budget=0)

    def patching_batch():
        return effects_of(setup, patch_sets)

    def lens():
        return compute_logit_lens(model, ids, target=target)

    return [
        Case("HF forward", hf_forward, reference="self"),
        Case("HF fwd+bwd", hf_forward_backward),
        Case("HF fwd+bwd (acts)", hf_forward_backward_activations),
        Case("model.run", run),
        Case("attention first data", attention_first_data),
        Case("ablation update", ablation_update),
        Case("attribution (budget 0)", attribution, reference="forward_backward"),
        Case("patching batch (8+2 rows)", patching_batch),
        Case("logit lens", lens),
    ]


# ------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--quick", action="store_true", help="T=128 only")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    lengths = [128] if args.quick else args.tokens

    started = time.perf_counter()
    hf = llama_8b_width()
    model = ni.load(hf, tokenizer=word_level_tokenizer(hf.config.vocab_size))
    n_params = sum(p.numel() for p in hf.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32; {n_params / 1e6:.0f}M parameters "
          f"({hf.config._attn_implementation}); built + loaded in {time.perf_counter() - started:.1f} s; "
          f"RSS {_status('VmRSS:') / GB:.2f} GB")
    print(f"peak RSS: in-process, VmRSS sampled every 5 ms + VmHWM after a clear_refs reset "
          f"({'available' if _reset_high_water() else 'NOT available: samples only'})")

    generator = torch.Generator().manual_seed(0)
    warm = torch.randint(0, hf.config.vocab_size, (16,), generator=generator).tolist()
    started = time.perf_counter()
    for case in cases_for(model, hf, warm, notes=None):  # first-use costs (.source, thread pools, allocator)
        case.call()
    print(f"warm-up at T=16: {time.perf_counter() - started:.1f} s")

    notes: list[str] = []
    rows = []
    for n_tokens in lengths:
        ids = torch.randint(0, hf.config.vocab_size, (n_tokens,), generator=generator).tolist()
        cases = cases_for(model, hf, ids, notes)
        for _ in range(args.repeats):  # interleaved, so machine noise hits every call alike
            for case in cases:
                try:
                    case.samples.append(measure(case.call, model))
                except Exception as error:  # noqa: BLE001 - report and measure the rest
                    notes.append(f"T={n_tokens} {case.name}: FAILED {type(error).__name__}: {error}")
                    case.call = lambda: None
                    case.samples = []
                    case.reference = "failed"
        medians = {case.name: statistics.median(s.seconds for s in case.samples) for case in cases if case.samples}
        references = {"forward": medians.get("HF forward"), "forward_backward": medians.get("HF fwd+bwd")}
        for case in cases:
            if not case.samples:
                rows.append((case.name, n_tokens, None, None, None, "", None, None, "FAILED"))
                continue
            seconds = medians[case.name]
            reference = None if case.reference in ("self", "failed") else references[case.reference]
            ratio = None if not reference else seconds / reference
            rss = max(s.rss_increase for s in case.samples) / GB
            forwards = case.samples[-1].forwards if not case.name.startswith("HF") else None
            checks = []
            checks.append("RSS ok" if rss < RSS_TARGET_GB else f"RSS >= {RSS_TARGET_GB:g} GB")
            if case.name.startswith("attribution") and ratio is not None:
                if medians.get("HF fwd+bwd (acts)"):
                    notes.append(f"T={n_tokens} attribution / HF fwd+bwd (acts): "
                                 f"{seconds / medians['HF fwd+bwd (acts)']:.2f}x")
                checks.append(f"<= {ATTRIBUTION_TARGET:g}x ok" if ratio <= ATTRIBUTION_TARGET
                              else f"> {ATTRIBUTION_TARGET:g}x MISSED")
            label = {"forward": "fwd", "forward_backward": "f+b"}.get(case.reference, "")
            fastest = min(s.seconds for s in case.samples)
            rows.append((case.name, n_tokens, seconds, fastest, ratio, label, rss, forwards, ", ".join(checks)))

    print()
    print(f"{'call':<26} {'T':>5} {'s (median)':>11} {'s (min)':>8} {'ratio':>10} {'peak RSS +GB':>13} {'forwards':>9}  targets")
    for name, n_tokens, seconds, fastest, ratio, label, rss, forwards, checks in rows:
        sec = "-" if seconds is None else f"{seconds:.2f}"
        rat = "-" if ratio is None else f"{ratio:.2f}x {label}"
        mem = "-" if rss is None else f"{rss:.2f}"
        fwd = "-" if forwards is None else str(forwards)
        low = "-" if fastest is None else f"{fastest:.2f}"
        print(f"{name:<26} {n_tokens:>5} {sec:>11} {low:>8} {rat:>10} {mem:>13} {fwd:>9}  {checks}")
    print()
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
