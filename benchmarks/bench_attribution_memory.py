"""Peak memory of `compute_attribution(model, ids, target, foil, exact_budget=0)` (estimates
only: one forward + one backward and the per-head reduction) on a random-init
GPT-2-small-sized model (12 layers x 12 heads, d_model 768, vocabulary 50,257,
float32), at T = 512 and 1,024 tokens.

Each case runs in a fresh subprocess: the model is built and one short warm-up
call made first, then RSS is read just before the measured call and sampled
every 2 ms during it (VmRSS of /proc/self/status, and the kernel's own high-water
mark VmHWM, which catches peaks between samples after a reset through
/proc/self/clear_refs), after malloc_trim hands freed heap back. Three
figures per case: the whole call from the prompt ("prompt"); the attribution
alone from an existing gradient run ("run"), the part the attribution
controls, so that the run itself (the engine's forward + backward, captures
and gradients) is the difference; and the widget `ni.attribute` ("view",
which also draws one head's map and the ranked list; --sources view).

    python benchmarks/bench_attribution_memory.py [--lengths 512 1024]
    PYTHONPATH=/tmp/old python benchmarks/bench_attribution_memory.py   # another checkout's package
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def high_water() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_high_water() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def child(n_tokens: int, source: str) -> dict:
    import random

    import torch

    sys.path.insert(0, str(HERE))
    from bench_attribution import gpt2_small_random, random_prompt

    from nbinterp.analysis.attribution import compute_attribution

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model = gpt2_small_random()
    rng = random.Random(0)
    ids, target, foil = random_prompt(model, n_tokens, rng)
    small, t_small, f_small = random_prompt(model, 16, rng)
    compute_attribution(model, small, t_small, f_small, exact_budget=0)  # imports, first-use allocations
    run = None
    if source == "run":
        run = model.run(ids, target=target, foil=foil, gradients=True)
    import gc

    gc.collect()
    # hand freed heap back to the system, so that "before" is what is held, not
    # what the allocator kept from the gradient run (which the call would reuse)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = rss()
    reset = reset_high_water()
    peak = before
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    if source == "plain":
        # the floor: a plain HF forward + backward of the same metric (weights
        # frozen, gradients w.r.t. activations only), no nbinterp code
        hf = model.hf
        for parameter in hf.parameters():
            parameter.requires_grad_(False)
        with torch.enable_grad():
            embeddings = hf.get_input_embeddings()(torch.as_tensor(ids).reshape(1, -1)).detach().requires_grad_(True)
            logits = hf(inputs_embeds=embeddings).logits[0, -1]
            (logits[model.token_id(target)] - logits[model.token_id(foil)]).backward()
        att = None
    elif source == "view":
        import nbinterp as ni

        att = ni.attribute(model, ids, target=target, foil=foil, exact_budget=0).attribution
    else:
        att = compute_attribution(model, run if run is not None else ids, target, foil, exact_budget=0)
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    if reset:
        peak = max(peak, high_water())
    assert att is None or len(att.edges) > 0
    return {"T": n_tokens, "source": source, "before": before, "peak": peak, "increase": peak - before,
            "seconds": seconds, "cells": model.n_layers * model.n_heads * n_tokens * n_tokens,
            "hwm_reset": reset}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--sources", nargs="+", default=["plain", "prompt", "run"], choices=["plain", "prompt", "run", "view"],
                        help="plain: a plain HF forward + backward of the metric (the floor); prompt: attribute from "
                             "the prompt; run: from a gradient run made before; view: the widget")
    parser.add_argument("--child", nargs=2, metavar=("T", "SOURCE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1])))
        return
    import nbinterp

    print(f"package: {Path(nbinterp.__file__).parent}")
    print(f"{'T':>5}  {'from':<7}{'peak RSS increase':>19}{'bytes / (L*H*T^2)':>19}{'seconds':>9}")
    for n_tokens in args.lengths:
        for source in args.sources:
            out = subprocess.run([sys.executable, __file__, "--child", str(n_tokens), source],
                                 capture_output=True, text=True, env=os.environ.copy())
            if out.returncode != 0:
                print(f"{n_tokens:>5}  {source:<7} failed:\n{out.stderr[-2000:]}")
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{row['T']:>5}  {row['source']:<7}{row['increase'] / 1e9:>16.3f} GB"
                  f"{row['increase'] / row['cells']:>19.1f}{row['seconds']:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
