"""The files of an evaluation: predictions.csv, metrics.json, roc.png, compare.json (docs/design.md, run-folder
contract). Writers and readers only; scoring is engine/inference.py's."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from sbssl.errors import SbsslError
from sbssl.evaluation.metrics import exam_metrics, paired_auc_difference, seed_averaged_difference
from sbssl.registry import CNNS
from sbssl.utils.io import atomic_write_json, atomic_write_text
from sbssl.utils.rundir import COMPARE, COMPARE_PLOT, MEMBER_PREDICTIONS, METRICS, PREDICTIONS, ROC


def write_evaluation(out: Path, cfg, split: str, records: list, probs: np.ndarray, seeds: list[int],
                     init: str = "scratch") -> dict:
    """metrics.json (ensemble and per member), predictions.csv, predictions_members.csv and roc.png for the
    members' probabilities `probs` (members, exams) of a split's exams; returns the metrics. Writes only."""
    y = np.array([r.label for r in records])
    cases = [r.case for r in records]
    p = probs.mean(0)
    metrics = {"task": cfg.data.task, "plane": cfg.data.plane, "split": split, **exam_metrics(y, p),
               "members": len(seeds), "init": init, "model": cfg.model.name,
               "aggregator": "max" if cfg.model.name in CNNS else cfg.finetune.aggregator,
               "member_metrics": [{"seed": s, **exam_metrics(y, q)} for s, q in zip(seeds, probs, strict=True)]}
    out = Path(out)
    write_predictions(out / PREDICTIONS, cases, p, y)
    write_member_predictions(out / MEMBER_PREDICTIONS, cases, probs, seeds)
    roc_plot(out / ROC, y, probs, p, seeds, f"{cfg.data.task} / {cfg.data.plane} / {split}")
    atomic_write_json(out / METRICS, metrics)  # last: the finished marker
    return metrics


def write_predictions(path: Path, cases: list[str], p: np.ndarray, y: np.ndarray | None,
                      sort_by_probability: bool = False) -> None:
    """One row per exam. Probabilities keep 9 significant digits (a float32 exactly), so that `compare` and
    `report`, which read this file, rank the exams as metrics.json did: fewer digits tie near-equal scores."""
    order = np.argsort(-p, kind="stable") if sort_by_probability else np.arange(len(cases))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case", "probability", "label"])
    for i in order:
        lab = "" if y is None or y[i] is None or y[i] < 0 else int(y[i])
        w.writerow([cases[i], f"{float(p[i]):.9g}", lab])
    atomic_write_text(path, buf.getvalue())


def write_member_predictions(path: Path, cases: list[str], probs: np.ndarray, seeds: list[int] | list[str]
                             ) -> None:
    """One column per member (`member_<seed>`) or per named part (a fusion's planes)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case", *[s if isinstance(s, str) else f"member_{s}" for s in seeds]])
    for i, c in enumerate(cases):
        w.writerow([c, *[f"{float(q):.9g}" for q in probs[:, i]]])
    atomic_write_text(path, buf.getvalue())


def read_predictions(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    rows = list(csv.DictReader(Path(path).read_text().splitlines()))
    return ([r["case"] for r in rows], np.array([float(r["probability"]) for r in rows]),
            np.array([int(r["label"]) if r["label"] != "" else -1 for r in rows]))


def roc_plot(path: Path, y: np.ndarray, member_probs: np.ndarray, ensemble: np.ndarray, seeds: list,
             title: str, kind: str = "member") -> None:
    from sbssl.utils.plotting import pyplot, save_png

    plt = pyplot()
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if len(np.unique(y)) == 2:
        for s, q in zip(seeds, member_probs, strict=True):
            fpr, tpr, _ = roc_curve(y, q)
            ax.plot(fpr, tpr, lw=0.8, alpha=0.6, label=f"{kind} {s} (AUC {roc_auc_score(y, q):.3f})")
        fpr, tpr, _ = roc_curve(y, ensemble)
        whole = "fused" if kind == "plane" else "ensemble"
        ax.plot(fpr, tpr, lw=2.2, color="k", label=f"{whole} (AUC {roc_auc_score(y, ensemble):.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    save_png(fig, path, dpi=90)


def compare_runs(run_a: Path, run_b: Path, out: Path, reps: int = 2000) -> dict:
    """Paired bootstrap of AUC(a) - AUC(b) on the exams both runs scored; writes compare.json and its plot."""
    res = paired_runs(run_a, run_b, reps)
    out = Path(out)
    boot = np.array(res.pop("bootstrap"))
    atomic_write_json(out / COMPARE, res)
    _compare_plot(out / COMPARE_PLOT, boot, res)
    return res


def compare_over_seeds(runs_a: list[Path], runs_b: list[Path], out: Path, reps: int = 2000) -> dict:
    """compare_runs for two recipes, each trained at the same seeds (runs_a[k] and runs_b[k] at seed k): the
    seed-averaged difference with its two-level interval (metrics.seed_averaged_difference)."""
    res = paired_runs_over_seeds(runs_a, runs_b, reps)
    res.update({"run_a": [str(r) for r in runs_a], "run_b": [str(r) for r in runs_b]})
    boot = np.array(res.pop("bootstrap"))
    atomic_write_json(Path(out) / COMPARE, res)
    _compare_plot(Path(out) / COMPARE_PLOT, boot, res)
    return res


def paired_runs(run_a: Path, run_b: Path, reps: int = 2000) -> dict:
    """`metrics.paired_auc_difference` of two run folders' predictions, checked to score the same exams."""
    _, y, qa, qb = _paired_predictions(run_a, run_b)
    res = paired_auc_difference(y, qa, qb, reps)
    res.update({"run_a": str(run_a), "run_b": str(run_b)})
    return res


def paired_runs_over_seeds(runs_a: list[Path], runs_b: list[Path], reps: int = 2000) -> dict:
    """`metrics.seed_averaged_difference` of two recipes, each trained at the same seeds (runs_a[k] and runs_b[k]
    at seed k), every run checked to score the same exams."""
    if not runs_a or len(runs_a) != len(runs_b):
        raise ValueError(f"paired_runs_over_seeds needs as many runs of a as of b ({len(runs_a)}, {len(runs_b)})")
    pairs = [_paired_predictions(a, b) for a, b in zip(runs_a, runs_b, strict=True)]
    for (cases, _, _, _), a in zip(pairs, runs_a, strict=True):
        if cases != pairs[0][0]:
            raise SbsslError(f"{Path(a) / PREDICTIONS} and {Path(runs_a[0]) / PREDICTIONS} score different exams")
    return seed_averaged_difference(pairs[0][1], np.stack([p[2] for p in pairs]), np.stack([p[3] for p in pairs]),
                                    reps)


def _paired_predictions(run_a: Path, run_b: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Exams, labels and both runs' probabilities, checked to be the same labelled exams of both classes."""
    pa, pb = Path(run_a) / PREDICTIONS, Path(run_b) / PREDICTIONS
    for p in (pa, pb):
        if not p.is_file():
            raise SbsslError(f"{p}: not found (evaluate the run first)")
    ca, qa, ya = read_predictions(pa)
    cb, qb, yb = read_predictions(pb)
    if ca != cb or not np.array_equal(ya, yb):
        raise SbsslError(f"{pa} and {pb} score different exams or labels; compare needs the same split")
    if (ya < 0).any() or len(np.unique(ya)) < 2:
        raise SbsslError(f"{pa}: compare needs labels of both classes")
    return ca, ya, qa, qb


def _compare_plot(path: Path, boot: np.ndarray, res: dict) -> None:
    from sbssl.utils.plotting import pyplot, save_png

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(boot, bins=50, color="#4477aa", alpha=0.8)
    ax.axvline(0, color="k", lw=1)
    ax.axvline(res["difference"], color="#cc3311", lw=2, label=f"difference {res['difference']:+.3f}")
    for q in res["ci95"]:
        ax.axvline(q, color="#cc3311", ls="--", lw=1)
    ax.set(xlabel="AUC(a) - AUC(b), paired bootstrap", ylabel="resamples",
           title=f"95% CI [{res['ci95'][0]:+.3f}, {res['ci95'][1]:+.3f}]")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=90)


def load_metrics(run: Path) -> dict:
    return json.loads((Path(run) / METRICS).read_text())
