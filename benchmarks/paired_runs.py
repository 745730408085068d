"""Two recipes compared on the same exams, over training seeds: run k of A against run k of B.

transfer.py pairs arms inside one invocation; a candidate measured later (another region, another encoder) is
paired with the runs already made by this script instead: `metrics.seed_averaged_difference` through
`report_files.paired_runs_over_seeds` (`ci95` resamples seeds and exams; `ci95_exams` the exams only).

usage: python benchmarks/paired_runs.py --a RUN[,RUN...] --b RUN[,RUN...] [--name NAME] [--no-record]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import record

from sbssl.evaluation.report_files import paired_runs_over_seeds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, help="run folders of recipe A, one per training seed (comma-separated)")
    ap.add_argument("--b", required=True, help="run folders of recipe B at the same seeds, in the same order")
    ap.add_argument("--name", default="paired_runs")
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args()
    d = paired_runs_over_seeds([Path(p) for p in a.a.split(",")], [Path(p) for p in a.b.split(",")])
    result = {k: d[k] for k in ("auc_a", "auc_b", "difference", "per_seed", "ci95", "ci95_exams", "seeds", "n",
                                "positives")}
    summary = (f"A {d['auc_a']:.3f}, B {d['auc_b']:.3f}; A - B {d['difference']:+.3f} "
               f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] (seeds " + ", ".join(f"{x:+.3f}" for x in d["per_seed"])
               + ")")
    print(summary)
    if not a.no_record:
        record(a.name, result, "python benchmarks/paired_runs.py " + " ".join(sys.argv[1:]), summary)


if __name__ == "__main__":
    main()
