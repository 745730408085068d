"""Learnability ladder: how well each model learns the ACL task from all train labels, from easy to hard.

    python benchmarks/learnability.py [--train 1130] [--difficulties 0,0.25,0.5] [--models cnn,vit,gmml]

For each difficulty a synthetic set is generated (seed 3; --size px, MRNet's prevalences) and each model is
fine-tuned with the CPU recipe (finetune/cpu, one member, about --steps optimiser steps) on every train label,
its epoch chosen on a stratified fifth of train, then scored once on valid:
  cnn  - the MRNet-style CNN baseline from random init;
  vit  - the CPU recipe's ViT from random init (supervised only);
  gmml - the same ViT from the shipped GMML encoder (builtin:cpu).
Each row: valid AUC with its 2,000-resample stratified bootstrap interval. Adds a run to results/learnability.json
and rewrites RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record  # noqa: E402
from label_efficiency import epochs_for  # noqa: E402

from sbssl.config import load_config  # noqa: E402
from sbssl.evaluation.report_files import load_metrics  # noqa: E402
from sbssl.synth import SynthSpec, generate  # noqa: E402
from sbssl.workflow import finetune  # noqa: E402

MODELS = {"cnn": ["init=scratch", "model.name=mrnet_cnn", "train.lr=3.2e-2"],
          "vit": ["init=scratch"],
          "gmml": ["init=builtin:cpu"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/learnability")
    ap.add_argument("--train", type=int, default=1130)
    ap.add_argument("--valid", type=int, default=120)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--difficulties", default="0,0.25,0.5")
    ap.add_argument("--models", default="cnn,vit,gmml")
    ap.add_argument("--steps", type=int, default=400, help="optimiser steps per run (epochs follow)")
    ap.add_argument("--finetune", default="", help="extra fine-tuning overrides")
    a = ap.parse_args()
    work, t0, rows = Path(a.work), time.perf_counter(), []
    epochs = epochs_for(a.train, a.steps)
    for d in [float(v) for v in a.difficulties.split(",")]:
        data = work / f"data-d{d:g}" / "MRNet-v1.0"
        if not (data / "valid-acl.csv").exists():
            generate(data, SynthSpec(a.train, a.valid, a.size, seed=3, difficulty=d))
        for name in a.models.split(","):
            run = work / f"{name}-d{d:g}"
            t = time.perf_counter()
            if not (run / "metrics.json").exists():
                over = ["finetune.ensemble=1", f"train.epochs={epochs}", *MODELS[name], *a.finetune.split()]
                finetune(load_config("finetune/cpu", over), data, run)
            m = load_metrics(run)
            rows.append({"difficulty": d, "model": name, "auc": m["auc"], "auc_ci95": m["auc_ci95"],
                         "accuracy": m["accuracy"], "epochs": epochs, "seconds": time.perf_counter() - t})
            print(f"difficulty {d:4.2f} {name:5s} AUC {m['auc']:.3f} [{m['auc_ci95'][0]:.3f}, "
                  f"{m['auc_ci95'][1]:.3f}]  ({time.perf_counter() - t0:.0f} s)", flush=True)
    out = {"train": a.train, "valid": a.valid, "size": a.size, "steps": a.steps, "rows": rows,
           "seconds": time.perf_counter() - t0}
    summary = "; ".join(f"d={r['difficulty']:g} {r['model']} {r['auc']:.3f} [{r['auc_ci95'][0]:.3f}, "
                        f"{r['auc_ci95'][1]:.3f}]" for r in rows)
    record("learnability", out, "python " + " ".join(sys.argv), summary)


if __name__ == "__main__":
    main()
