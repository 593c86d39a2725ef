"""The four views over a data set (ni.attribute / ni.ablate / ni.patch /
ni.logit_lens given a PromptSet): time to compute every row of the bundled
model's planted-bias set (two templates, so two token lengths; counterfactual
pairs), side by side with the clean forwards of the same rows, so the ratio
survives a loaded machine.

    python benchmarks/bench_dataset_views.py [--given 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

import nbinterp as ni
from nbinterp.analysis import dataset_effects, dataset_runs
from nbinterp.analysis.datasets import PromptSet
from nbinterp.bundled import tasks

BUILDERS = {"attribute": dataset_effects.head_effects, "ablate": dataset_effects.ablation_effects,
            "patch": dataset_effects.patch_effects, "logit_lens": dataset_effects.lens_probabilities}


def best_of(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--given", type=int, default=len(tasks.BIAS_TEST_GIVEN_NAMES),
                        help="test given names (rows = 2 templates x names x 3 clans x 2 groups)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = ni.load()
    data = PromptSet.from_templates(tasks.BIAS_TEMPLATES, attribute="clan", groups=tasks.GROUP_CLANS,
                                    fillers={"given": tasks.BIAS_TEST_GIVEN_NAMES[: args.given]},
                                    target="doctor", foil="nurse").check(model)
    clean = best_of(lambda: dataset_runs.clean_metrics(model, data), 3)
    print(f"{len(data)} rows; the clean forwards of every row: {clean:.3f} s")
    for name, build in BUILDERS.items():
        forwards = model.forwards
        seconds = best_of(lambda: build(model, data).run(), 1)
        print(f"{name:>10}: {seconds:.3f} s = {seconds / clean:.1f}x the clean forwards, {model.forwards - forwards} forwards")


if __name__ == "__main__":
    main()
