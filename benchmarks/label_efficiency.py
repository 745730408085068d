"""Label efficiency: ACL AUC of GMML-initialised vs scratch fine-tuning as the number of
labelled exams grows, with 95% bootstrap intervals -- the curve that says how many exams to label.

    python benchmarks/label_efficiency.py [--data ROOT] [--encoder RUN] [--labels 25,50,100,200,0]

Without --data a synthetic set is generated (--train/--valid/--size/--difficulty); without
--encoder GMML pretrains one on the train split with the demo recipe (its labels unused, as in
the paper). Every point fine-tunes the demo recipe on a stratified subset of n train exams
(`finetune.labels=n`, nested: the 50 contain the 25) and is scored on the whole valid split.
Smaller subsets get proportionally more epochs (capped at --max-epoch-factor x) so that a
point is not also undertrained. Writes results/label_efficiency.json, a RESULTS.md row and
docs/label_efficiency.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, record  # noqa: E402

from sbssl.config import load_config  # noqa: E402
from sbssl.data.layout import list_exams  # noqa: E402
from sbssl.engine.finetune import finetune  # noqa: E402
from sbssl.engine.pretrain import pretrain  # noqa: E402
from sbssl.evaluate.report_files import compare_runs, load_metrics  # noqa: E402
from sbssl.synth import SynthSpec, generate  # noqa: E402


def epochs_for(n: int, n_all: int, base: int, cap: float) -> int:
    """About the optimiser steps of the full-data run, within [base, cap * base] epochs."""
    return int(min(round(cap * base), max(base, round(base * n_all / n))))


def plot(points: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for init, colour in (("gmml", "tab:blue"), ("scratch", "tab:orange")):
        pts = sorted((p for p in points if p["init"] == init), key=lambda p: p["labels"])
        x = [p["labels"] for p in pts]
        ax.plot(x, [p["auc"] for p in pts], "o-", color=colour, label="GMML pretrained" if init == "gmml" else
                "random init")
        ax.fill_between(x, [p["auc_ci95"][0] for p in pts], [p["auc_ci95"][1] for p in pts], color=colour,
                        alpha=0.15)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(sorted({p["labels"] for p in points}), [str(v) for v in sorted({p["labels"] for p in points})])
    ax.set_xlabel("labelled training exams")
    ax.set_ylabel("valid AUC (95% bootstrap CI)")
    ax.set_ylim(0.2, 1.0)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/label_efficiency", help="folder for the data and runs")
    ap.add_argument("--data", help="an MRNet-layout set (default: generate a synthetic one)")
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--valid", type=int, default=120)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--difficulty", type=float, default=0.2)
    ap.add_argument("--encoder", help="a finished GMML run (default: pretrain one)")
    ap.add_argument("--pretrain", default="train.epochs=4", help="overrides of the pretraining recipe")
    ap.add_argument("--labels", default="25,50,100,200,0", help="labelled exam counts; 0 = all")
    ap.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs with all labels")
    ap.add_argument("--max-epoch-factor", type=float, default=6.0)
    ap.add_argument("--finetune", default="finetune.ensemble=1", help="extra fine-tuning overrides")
    ap.add_argument("--docs", default=str(HERE.parent / "docs" / "label_efficiency.png"))
    a = ap.parse_args()
    work, t0 = Path(a.work), time.perf_counter()
    data = Path(a.data) if a.data else work / "data" / "MRNet-v1.0"
    if not a.data and not (data / "valid-acl.csv").exists():
        generate(data, SynthSpec(a.train, a.valid, a.size, seed=1, difficulty=a.difficulty))
    n_all = len(list_exams(data, "train"))
    encoder = Path(a.encoder) if a.encoder else work / "pretrain"
    if not (encoder / "encoder.safetensors").exists() and not encoder.is_file():
        pretrain(load_config("pretrain/demo", [f"data.img_size={a.size}", *a.pretrain.split()]), data, encoder)
    t_pre = time.perf_counter() - t0
    points = []
    for n in [int(v) for v in a.labels.split(",")]:
        n_used = n if 0 < n < n_all else n_all
        epochs = epochs_for(n_used, n_all, a.epochs, a.max_epoch_factor)
        runs = {}
        for init in ("gmml", "scratch"):
            run = work / f"{init}-{n_used}"
            over = [f"finetune.labels={n}", f"train.epochs={epochs}", f"data.img_size={a.size}",
                    f"init={encoder if init == 'gmml' else 'scratch'}", *a.finetune.split()]
            if not (run / "metrics.json").exists():
                finetune(load_config("finetune/demo", over), data, run)
            m = load_metrics(run)
            points.append({"init": init, "labels": n_used, "epochs": epochs, "auc": m["auc"],
                           "auc_ci95": m["auc_ci95"], "accuracy": m["accuracy"], "members": m["members"]})
            runs[init] = run
            print(f"n={n_used:4d} {init:8s} epochs {epochs:3d}  AUC {m['auc']:.3f} "
                  f"[{m['auc_ci95'][0]:.3f}, {m['auc_ci95'][1]:.3f}]", flush=True)
        cmp = compare_runs(runs["gmml"], runs["scratch"], work / f"compare-{n_used}")
        keep = ("difference", "ci95", "p_value_one_sided")
        points.append({"init": "gmml-scratch", "labels": n_used, **{k: cmp[k] for k in keep}})
    curve = [p for p in points if p["init"] != "gmml-scratch"]
    title = (f"ACL, sagittal, {a.size} px synthetic (difficulty {a.difficulty}), valid n={a.valid}"
             if not a.data else f"ACL, sagittal: {data}")
    plot(curve, Path(a.docs), title)
    out = {"data": str(data), "train_exams": n_all, "size": a.size, "difficulty": a.difficulty,
           "pretrain": a.pretrain, "finetune": a.finetune, "base_epochs": a.epochs, "points": points,
           "pretrain_seconds": t_pre, "seconds": time.perf_counter() - t0}
    summary = "; ".join(f"n={p['labels']}: GMML {p['auc']:.3f}" if p["init"] == "gmml" else
                        f"scratch {p['auc']:.3f}" for p in curve)
    record("label_efficiency", out, "python " + " ".join(sys.argv), summary)


if __name__ == "__main__":
    main()
