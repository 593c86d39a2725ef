"""Cold start of the bundled model: `import nbinterp` and `ni.load()` in fresh
Python processes (nothing cached in the interpreter; files in the OS page cache
after the first run), and a warm `ni.load()` in the same process.

    python benchmarks/bench_load.py [--repeats 5]

Target (issue 2): `ni.load()` of the bundled model under 2 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    samples = []
    for _ in range(args.repeats + 1):  # the first run warms the page cache and is dropped
        out = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True).stdout
        samples.append(json.loads(out.strip().splitlines()[-1]))
    samples = samples[1:]
    print(f"bundled model, fresh processes, median of {len(samples)} (seconds)")
    for key, label in [("import", "import nbinterp"), ("load", "ni.load() (cold: first in the process)"),
                       ("load_warm", "ni.load() again in the same process"), ("first_run", "first model.run")]:
        values = [s[key] for s in samples]
        print(f"  {label:<42}{statistics.median(values):7.2f}   (min {min(values):.2f}, max {max(values):.2f})")
    total = [s["import"] + s["load"] for s in samples]
    print(f"  {'import + ni.load()':<42}{statistics.median(total):7.2f}")


if __name__ == "__main__":
    main()
